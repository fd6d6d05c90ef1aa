"""End to end: the default job as ``python -m trainer`` against the same job written by hand.

    python scripts/bench_job.py                      # 4 alternating pairs of the 3-epoch job
    python scripts/bench_job.py --pairs 6 --json job.json
    python scripts/bench_job.py --pairs 1 --max-steps 10   # a quick check that every side runs

Whole processes, start to exit, as a user waits for them: ``python -m trainer`` (CNN on
Fashion-MNIST, 3 epochs, progress bar on), ``scripts/handwritten_default_job.py`` (plain PyTorch:
SummaryWriter, tqdm, a validation and a checkpoint per epoch) and, when Lightning is installed,
``scripts/lightning_default_job.py``. The sides alternate within each pair, the first side
alternating between pairs; the table gives each side's median wall time and final validation
metrics, and the ratio trainer/hand-written as the median and the geometric mean over pairs (drift in a shared
machine's speed cancels within a pair, not across other processes' bursts: see
docs/benchmarks.md). Each process gets the machine's threads (``trainer.num_threads=auto``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from bench import cpu_name  # scripts/bench.py, beside this one
from handwritten_default_job import WARMUP

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


def sides() -> list[str]:
    """The sides this machine can run: Lightning only where it is installed."""
    names = ["trainer", "handwritten"]
    return names + ["lightning"] if importlib.util.find_spec("lightning") is not None else names


def command(side: str, out: Path, max_steps: int | None) -> list[str]:
    """``side``'s command line, writing into ``out``; ``max_steps`` shortens the job to that many
    updates and its warmup to at most half of them (the default schedule needs W <= T)."""
    if side == "trainer":
        steps = [] if max_steps is None else [f"trainer.max_steps={max_steps}",
                                              f"schedule.warmup_steps={min(WARMUP, max_steps // 2)}"]
        return [sys.executable, "-m", "trainer", f"hydra.run.dir={out}", *steps]
    steps = [] if max_steps is None else ["--max-steps", str(max_steps), "--warmup-steps", str(min(WARMUP, max_steps // 2))]
    return [sys.executable, str(SCRIPTS / f"{side}_default_job.py"), "--out", str(out), *steps]


def run_side(side: str, out: Path, max_steps: int | None) -> dict[str, float]:
    """Run one side to its exit; returns its wall time (s) and final val/loss and val/acc (the
    trainer's from its metrics.json, the scripts' from the JSON on their last line)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.run(command(side, out, max_steps), cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    if side == "trainer":
        metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    else:
        metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "val/loss": metrics["val/loss"], "val/acc": metrics["val/acc"]}


def bench(pairs: int, max_steps: int | None) -> dict:
    """``pairs`` rounds of every side, the order reversed every other round; medians and the
    per-round ratios to the hand-written script."""
    names = sides()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(pairs):
            for side in names if pair % 2 == 0 else names[::-1]:
                runs[side].append(run_side(side, Path(tmp) / f"{side}-{pair}", max_steps))
                print(f"pair {pair} {side}: {runs[side][-1]['wall_s']:.2f} s, "
                      f"val/acc {runs[side][-1]['val/acc']:.4f}", file=sys.stderr)
    ratios = {
        side: [r["wall_s"] / h["wall_s"] for r, h in zip(runs[side], runs["handwritten"])]
        for side in names if side != "handwritten"
    }
    return {
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": metadata.version("torch"), "load_average_at_end": list(os.getloadavg())},
        "max_steps": max_steps,
        "pairs": pairs,
        "sides": {side: {"median_wall_s": statistics.median(r["wall_s"] for r in rs), "runs": rs}
                  for side, rs in runs.items()},
        # The geometric mean weighs a pair at 1.1 and one at 1/1.1 alike; with as many pairs of each
        # order it cancels a side's gain or loss from running first (seen here: docs/benchmarks.md).
        "ratio_to_handwritten": {
            side: {"median": statistics.median(rs), "geometric_mean": statistics.geometric_mean(rs), "pairs": rs}
            for side, rs in ratios.items()
        },
    }


def table(result: dict) -> str:
    lines = ["| side | median wall (s) | val/loss | val/acc | wall / hand-written, per pair (median; geometric mean) |",
             "|---|---|---|---|---|"]
    for side, data in result["sides"].items():
        last = data["runs"][-1]
        ratio = result["ratio_to_handwritten"].get(side)
        paired = (", ".join(f"{r:.3f}" for r in ratio["pairs"])
                  + f" (**{ratio['median']:.3f}**; {ratio['geometric_mean']:.3f})") if ratio else "1"
        lines.append(f"| {side} | {data['median_wall_s']:.2f} | {last['val/loss']:.4f} | {last['val/acc']:.2%} | {paired} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python scripts/bench_job.py", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4,
                        help="rounds of every side (default 4: an even number runs each side first equally often)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="shorten every side to N updates (and the warmup to at most N/2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    result = bench(args.pairs, args.max_steps)
    print(table(result))
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in result['machine']['load_average_at_end'])} "
          f"on {result['machine']['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
