"""``logger.writers=[csv]``: ``metrics.csv`` in the run directory, one row per logged step and tag:
``step,tag,value,wall_time``.

Values are written as Python writes floats (``repr``: exact, 17 significant digits where needed),
so two runs that logged the same numbers have the same rows. Like the event files, the file is
flushed and fsync'ed before every checkpoint; a resumed run first drops the rows at or after the
step it resumes from (logged after its checkpoint, before the run was killed), so every logged
step is in the file once, as an uninterrupted run would have written it.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.files import csv_rows, restart_csv

FILE = "metrics.csv"
HEADER = ("step", "tag", "value", "wall_time")


class Writer:
    def __init__(self, run_dir: Path, *, purge_step: int, config: Mapping[str, Any]) -> None:
        path = run_dir / FILE
        kept = [row for row in csv_rows(path, len(HEADER)) if int(row[0]) < purge_step]
        self._file = restart_csv(path, HEADER, kept, buffering=1 << 16)
        self._csv = csv.writer(self._file)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        now = f"{time.time():.3f}"
        self._csv.writerows((step, tag, repr(float(value)), now) for tag, value in values.items())

    def hparams(self, hparams: Mapping[str, Any], *, experiment: bool) -> None:
        """Nothing: the run's ``config.yaml`` and ``overrides.yaml`` hold them."""

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, status: str) -> None:
        self._file.close()

    @staticmethod
    def hint(run_dir: Path) -> str:
        """How to look at what it wrote."""
        return f"every logged value: {run_dir / FILE}"

    @staticmethod
    def read(run_dir: Path) -> dict[str, list[tuple[int, float]]] | None:
        path = run_dir / FILE
        if not path.is_file():
            return None
        scalars: dict[str, list[tuple[int, float]]] = {}
        for step, tag, value, _ in csv_rows(path, len(HEADER)):
            scalars.setdefault(tag, []).append((int(step), float(value)))
        return {tag: sorted(points, key=lambda point: point[0]) for tag, points in scalars.items()}
