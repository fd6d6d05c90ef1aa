"""``metrics.json`` in each run directory: how the run ended, its final metrics and wall time.

Written when a run ends for any reason, so a sweep report can tell completed, stopped and failed
jobs apart; a run directory without one is still running or was killed outright.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUMMARY_FILE = "metrics.json"
STATUSES = ("completed", "preempted", "stopped_nonfinite", "failed")


def write_summary(
    run_dir: Path, status: str, *, metrics: dict[str, float] | None = None, wall_time_s: float | None = None,
    error: str | None = None,
) -> None:
    """Record how the run ended (``status`` is one of :data:`STATUSES`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"status": status, "metrics": metrics or {}, "wall_time_s": wall_time_s, "error": error}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None while it has none (running, or killed without a chance to write)."""
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None
