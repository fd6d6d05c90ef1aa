"""Where the Hydra configs live, and tidying up after a config error."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

#: ``conf/`` of a source checkout or editable install, else the copy installed inside the package.
CONFIG_DIR = _PACKAGE.parent / "conf" if (_PACKAGE.parent / "conf" / "config.yaml").exists() else _PACKAGE / "conf"


def remove_if_empty(run_dir: Path) -> None:
    """Drop the run directory Hydra made before our checks failed, so a bad config writes nothing."""
    try:
        run_dir.rmdir()
    except OSError:  # not empty (a real run's files) or already gone: leave it
        pass
