"""Compare the jobs of a sweep: ``python scripts/compare.py SWEEP_DIR`` (same as ``python -m trainer.compare``)."""

from trainer.compare import main

if __name__ == "__main__":
    main()
