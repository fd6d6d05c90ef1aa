"""The errors users see: bad configuration or missing data (exit 2), and a full disk (exit 5)."""

from __future__ import annotations

import errno
from pathlib import Path

#: ``python -m trainer``'s exit code when the run directory's disk is full (see trainer.stopping).
EXIT_NO_SPACE = 5


class ConfigError(ValueError):
    """A configuration value (or the data it points at) cannot work.

    The message names the offending key, its value, and how to fix it; the CLI prints it on one
    line and exits with code 2 before anything is trained or written.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class NoSpace(OSError):
    """Checkpoints do not fit on the disk of ``directory``; the files already there are intact."""

    def __init__(self, directory: Path, *, needed: int, free: int, what: str = "a checkpoint") -> None:
        super().__init__(errno.ENOSPC, f"no space left in {directory}: {format_bytes(needed)} needed for {what}, "
                                       f"{format_bytes(free)} free; free some space, then run again with trainer.resume=auto")
        self.directory, self.needed, self.free = directory, needed, free

    def __str__(self) -> str:
        return self.strerror


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``48.2 kB``, ``3.1 MB``, ``12.0 GB`` (powers of 1000)."""
    units = ("B", "kB", "MB", "GB")
    power = 0
    while n >= 1000 and power < len(units) - 1:
        n, power = n / 1000, power + 1
    return f"{n:.0f} B" if power == 0 else f"{n:.1f} {units[power]}"


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened: for error messages, never tracebacks."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
