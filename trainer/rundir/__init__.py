"""Everything written to, or read back from, a run directory: the lock, checkpoints, logs and
summaries. This face stays free of torch: Hydra imports its callbacks for every command, ``--help``
included."""

from trainer.rundir.lock import RunDirCheck, RunDirGuard

__all__ = ["RunDirCheck", "RunDirGuard"]
