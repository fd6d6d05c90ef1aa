"""A user's log writer, plugged in by its dotted path (``logger.writers=[userpkg.logs.JsonLines]``):
every logged step one JSON line in ``RUN_DIR/scalars.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class JsonLines:
    def __init__(self, run_dir: Path, *, purge_step: int, config: Mapping[str, Any]) -> None:
        self.file = open(run_dir / "scalars.jsonl", "a")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")

    def hparams(self, hparams: Mapping[str, Any], *, experiment: bool) -> None:
        self.file.write(json.dumps({"hparams": dict(hparams)}) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self, status: str) -> None:
        self.file.write(json.dumps({"status": status}) + "\n")
        self.file.close()
