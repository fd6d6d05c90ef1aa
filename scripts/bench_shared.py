"""A shared machine: one epoch of the default job alone, and two at once, ours beside the same job
written by hand (``scripts/handwritten_default_job.py``), as whole processes.

    python scripts/bench_shared.py --rounds 2 --json shared.json    # on a quiet machine

Each round runs, for each side: the job alone; two copies started together (as ``a & b`` from one
shell or a launcher script starts them, one process session); and a second copy started once the
first is training (``--late`` seconds after it, as a second experiment started from another
terminal a little later). Sides and cases alternate in order from round to round. The table gives
each case's median wall time per job and its ratio to the job alone: about 2 is what two jobs
sharing the cores should cost, and what running them one after the other costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EPOCH = 468  # updates in one epoch of the default job (60000 // 128)


OVERRIDES: list[str] = []  # --set: more overrides for the trainer's side


def commands(side: str, out: Path) -> list[str]:
    if side == "trainer":
        return [sys.executable, "-m", "trainer", "trainer.max_epochs=1", "logger.progress_bar=false",
                *OVERRIDES, f"hydra.run.dir={out}"]
    return [sys.executable, str(REPO / "scripts" / "handwritten_default_job.py"), "--out", str(out),
            "--max-steps", str(EPOCH)]


def start(side: str, out: Path) -> tuple[subprocess.Popen, float]:
    process = subprocess.Popen(commands(side, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    return process, time.perf_counter()


def finish(process: subprocess.Popen, started: float) -> float:
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a job failed (exit {process.returncode}): {stderr[-2000:]}")
    return time.perf_counter() - started


def case(side: str, kind: str, tmp: Path, late: float) -> list[float]:
    """Wall seconds of each job of one case: ``alone`` (one), ``together`` or ``late`` (two)."""
    first = start(side, tmp / f"{side}-{kind}-a")
    if kind == "alone":
        return [finish(*first)]
    if kind == "late":
        time.sleep(late)  # the first is past its start-up and training
    second = start(side, tmp / f"{side}-{kind}-b")
    return [finish(*first), finish(*second)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/bench_shared.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--late", type=float, default=6.0, help="seconds before the late second job starts")
    parser.add_argument("--sides", nargs="+", default=["trainer", "handwritten"], choices=["trainer", "handwritten"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for the trainer's side, e.g. trainer.num_threads=2 (every core, as before auto shared)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    OVERRIDES[:] = args.set
    kinds = ["alone", "together", "late"]
    walls: dict[str, dict[str, list[float]]] = {side: {kind: [] for kind in kinds} for side in args.sides}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = [(side, kind) for side in args.sides for kind in kinds]
            for side, kind in order if round_ % 2 == 0 else reversed(order):
                walls[side][kind] += case(side, kind, Path(tmp) / str(round_), args.late)
    print("| side | alone (s) | two together (s, × alone) | second one later (s, × alone) |")
    print("|---|---|---|---|")
    for side, cases in walls.items():
        alone = statistics.median(cases["alone"])
        cells = [f"{statistics.median(cases[k]):.1f}, {statistics.median(cases[k]) / alone:.2f}×" for k in kinds[1:]]
        print(f"| {side} | {alone:.1f} | {cells[0]} | {cells[1]} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load} on {os.cpu_count()} CPUs; {platform.processor() or platform.machine()}")
    if args.json is not None:
        record = {"walls": walls, "rounds": args.rounds, "late_s": args.late, "trainer_overrides": args.set}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
