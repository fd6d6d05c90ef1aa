"""Start-up: commands that train nothing, against ``python -c "import torch"``, as whole processes.

    python scripts/bench_startup.py                # 7 rounds
    python scripts/bench_startup.py --rounds 11 --json startup.json

Each round runs every command once, in an order that rotates from round to round; the table gives
each command's median wall time and its ratio to importing torch, as the median over rounds (a
shared machine's drift cancels within a round). ``tests/test_startup.py`` guards what these
commands import; this measures what that costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def commands(out: Path) -> dict[str, list[str]]:
    trainer = [sys.executable, "-m", "trainer"]
    return {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "python -m trainer --help": [*trainer, "--help"],
        "python -m trainer --cfg job": [*trainer, "--cfg", "job"],
        "python -m trainer optimizer.lr=-1 (config error)": [*trainer, "optimizer.lr=-1", f"hydra.run.dir={out}/error"],
        "python -m trainer.preview": [sys.executable, "-m", "trainer.preview", f"hydra.run.dir={out}/preview"],
        # Floors, not commands: what the preview cannot do without (a torch model, Hydra, a PNG
        # drawn by matplotlib), and what any script that builds a torch optimizer imports.
        'python -c "import torch, hydra, matplotlib.figure"': [
            sys.executable, "-c", "import torch, hydra, matplotlib.figure"],
        'python -c "import torch, torch._dynamo"': [sys.executable, "-c", "import torch, torch._dynamo"],
        # The commands above freeze the heap as they exit (trainer.app.cli.run_as_process), which
        # the baseline does not: this is the baseline without its final garbage collections.
        'python -c "import torch, gc; gc.freeze()"': [sys.executable, "-c", "import torch, gc; gc.freeze()"],
    }


def measure(rounds: int) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        named = commands(Path(tmp))
        names = list(named)
        walls: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                started = time.perf_counter()
                proc = subprocess.run(named[name], cwd=REPO, env=env, capture_output=True, text=True)
                walls[name].append(time.perf_counter() - started)
                # A command that fails early would be timed as a fast one.
                if proc.returncode != (2 if "config error" in name else 0):
                    raise SystemExit(f"{name} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(prog="python scripts/bench_startup.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write the wall times here")
    args = parser.parse_args()
    walls = measure(args.rounds)
    torch_walls = walls['python -c "import torch"']
    print("| command | median wall (s) | vs import torch, per-round median |\n|---|---|---|")
    for name, times in walls.items():
        ratio = statistics.median(t / base for t, base in zip(times, torch_walls))
        print(f"| `{name}` | {statistics.median(times):.2f} | {ratio:.2f}× |")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "wall_s": walls}, indent=2) + "\n")


if __name__ == "__main__":
    main()
