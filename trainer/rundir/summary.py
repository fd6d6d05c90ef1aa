"""``metrics.json`` in each run directory: how the run ended, its final metrics and wall time.

Written when a run ends for any reason, so a sweep report can tell completed, stopped and failed
jobs apart; a run directory without one is still running or was killed outright.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.files import write_atomic
from trainer.monitor import mode_of
from trainer.rundir.writers import optional_hook, read_scalars

SUMMARY_FILE = "metrics.json"


def write_summary(
    run_dir: Path, status: str, *, metrics: dict[str, float] | None = None, wall_time_s: float | None = None,
    error: str | None = None, lineage: dict[str, Any] | None = None,
) -> None:
    """Record how the run ended (``status`` is one of :data:`trainer.errors.STATUSES`); a branch's
    ``lineage`` (:func:`trainer.rundir.branch.lineage`) too."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"status": status, "metrics": metrics or {}, "wall_time_s": wall_time_s, "error": error,
               **({"lineage": lineage} if lineage is not None else {})}
    write_atomic(run_dir / SUMMARY_FILE, json.dumps(payload, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None while it has none (running, or killed without a chance to write).
    One that cannot be read (a copy cut short, another program's file) reads as a failed run that
    says so, never as an error of whoever reads it (a sweep's report)."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or not isinstance(summary.get("status"), str):
            raise ValueError("no status")
    except (OSError, ValueError) as error:
        return {"status": "failed", "metrics": {}, "wall_time_s": None,
                "error": f"{SUMMARY_FILE} unreadable ({type(error).__name__})"}
    return summary


def describe_run(
    run_dir: Path, metrics: dict[str, float], wall_time_s: float, *, status: str = "completed",
    history: dict[str, list[tuple[int, float]]] | None = None, writers: Sequence[str] = ("tensorboard",),
) -> str:
    """What the console says when a run completes, in a few lines: where it went, its updates and
    wall time, the final and best of each ``val/*`` metric, and how to look at it.

    ``history``: every ``val/*`` point of the run, tag -> [(updates done, value)], when this process
    logged them all (a fresh run). None reads them back through the run's ``writers``, so a resumed
    run counts the validations of its earlier part too (TensorBoard's reader takes most of a second
    to import: a fresh run need not wait for it).
    """
    if history is None:
        logged = read_scalars(run_dir, writers) or {}
        history = {tag: points for tag, points in logged.items() if tag.startswith("val/")}
    ended = "completed" if status == "completed" else "early stopped"
    lines = [f"run {ended}: {int(metrics['updates'])} updates in {wall_time_s:.1f} s, in {run_dir}"]
    for tag in (t for t in metrics if t.startswith("val/")):
        points = history.get(tag) or [(int(metrics["updates"]), metrics[tag])]
        finite = [p for p in points if math.isfinite(p[1])] or points
        step, best = (min if mode_of(tag) == "min" else max)(finite, key=lambda p: p[1])
        lines.append(f"  {tag:<9} final {metrics[tag]:.4f}  best {best:.4f} (after {step} updates)")
    for name in writers:
        hint = optional_hook(name, "hint")
        if hint is not None:
            lines.append(f"  {hint(run_dir)}")
    return "\n".join(lines)
