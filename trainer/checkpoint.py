"""Checkpoints: atomic writes, safe loads, and the RNG state that makes a resume exact.

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True`` (no
pickled code runs on load). Writes go to a temporary file that is fsync'ed and renamed over the
target, so a crash mid-write leaves the previous ``last.pt`` intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainer.errors import ConfigError, one_line

FORMAT = "trainer-checkpoint/1"
REQUIRED = ("format", "update", "model", "optimizer", "scaler", "schedule", "rng", "config")


def rng_state() -> dict[str, Any]:
    """Python's and torch's generator states (every CUDA device's too, when present)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely; any unreadable, truncated or foreign file is a ConfigError."""
    if not path.is_file():
        raise ConfigError("trainer.resume", f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip errors, unpickling refusals, short reads: all mean "not ours"
        raise ConfigError("trainer.resume", f"{path} is not a readable checkpoint ({one_line(error)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError("trainer.resume", f"{path} is not a trainer checkpoint (expected format {FORMAT})")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise ConfigError("trainer.resume", f"{path} lacks {', '.join(missing)}: it is incomplete")
    return state


def prune_numbered(run_dir: Path, keep: int) -> None:
    """Keep only the ``keep`` newest ``step-*.pt`` checkpoints in ``run_dir``."""
    numbered = sorted(run_dir.glob("step-*.pt"))
    for old in numbered[: max(len(numbered) - keep, 0)]:
        old.unlink()
