"""Where the Hydra configs live, how sweep jobs are named, and tidying up after a config error."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE = Path(__file__).resolve().parent

#: ``conf/`` of a source checkout or editable install, else the copy installed inside the package.
CONFIG_DIR = _PACKAGE.parent / "conf" if (_PACKAGE.parent / "conf" / "config.yaml").exists() else _PACKAGE / "conf"


def remove_if_empty(run_dir: Path) -> None:
    """Drop the run directory Hydra made before our checks failed, so a bad config writes nothing."""
    try:
        run_dir.rmdir()
    except OSError:  # not empty (a real run's files) or already gone: leave it
        pass


MAX_JOB_NAME = 200  # bytes, under the 255 most file systems allow for one name


def job_name(number: int, overrides: Sequence[str]) -> str:
    """``NUM_k=v,k=v`` for a sweep job's directory, overrides in command-line order (a sweeper's
    own parameters come first); long names are cut and end in a hash of the full name."""
    name = f"{number}_" + ",".join(overrides).replace("/", "_")
    if len(name.encode()) <= MAX_JOB_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name.encode()[: MAX_JOB_NAME - 9].decode(errors="ignore") + "~" + digest


def multiply(a: float, b: float) -> float:
    """``${mul:${optimizer.lr},0.01}``: a value that follows another, e.g. final LR = peak / 100."""
    return a * b


# Used by the configs (hydra.sweep.subdir, schedule presets); registered on import, before Hydra composes.
OmegaConf.register_new_resolver("job_name", job_name, replace=True)
OmegaConf.register_new_resolver("mul", multiply, replace=True)
