"""Where downloaded datasets are kept."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$TRAINER_DATA_CACHE``, else ``~/.cache/trainer``: torchvision downloads land here."""
    return Path(os.environ.get("TRAINER_DATA_CACHE", Path.home() / ".cache" / "trainer"))
