"""The errors users see, and how every run ends: one table from an exception to its status (in
``metrics.json`` and sweep reports) and the exit code of ``python -m trainer``.

| how the run ended | status | exit code |
|---|---|---|
| trained to the end | ``completed`` | 0 |
| ``trainer.early_stopping`` ended it | ``early_stopped`` | 0 |
| a bad config, missing data, an unusable or busy run directory (:class:`ConfigError`) | ``failed`` | 2 |
| an example that cannot be read or used mid-run; ``last.pt`` intact (:class:`DataError`) | ``failed`` | 2 |
| SIGTERM/SIGINT; ``last.pt`` written (:class:`Preempted`) | ``preempted`` | 3 |
| a non-finite loss with ``trainer.nonfinite=stop`` (:class:`NonFiniteStop`) | ``stopped_nonfinite`` | 4 |
| a gradient-norm spike with ``trainer.grad_spike.action=stop`` (:class:`GradSpikeStop`) | ``stopped_grad_spike`` | 4 |
| the disk is full; the checkpoints already written are intact | ``failed`` | 5 |
| anything else (a crash, ``trainer.nonfinite=raise``) | ``failed`` | 1 |
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

EXIT_CRASH = 1
EXIT_CONFIG = 2
EXIT_PREEMPTED = 3
EXIT_STOPPED = 4
EXIT_NO_SPACE = 5

#: Every status a run can end with (``metrics.json``'s ``status``).
STATUSES = ("completed", "early_stopped", "preempted", "stopped_nonfinite", "stopped_grad_spike", "failed")
#: The statuses of a run that ended as planned: a sweep counts them as completed.
FINISHED = ("completed", "early_stopped")


class ConfigError(ValueError):
    """A configuration value (or the data it points at) cannot work.

    The message names the offending key, its value, and how to fix it; the CLI prints it on one
    line and exits with code 2 before anything is trained or written.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class RunDirInUse(ConfigError):
    """Another live process holds the run directory: nothing may be written there."""


#: A DataError names at most this many items of a batch (the line stays one line).
MAX_NAMED_ITEMS = 5


class DataError(Exception):
    """Examples of a split that cannot be read or used (a damaged file, a ``__getitem__`` that
    raises, an input of another shape, a label out of range), found mid-run: named by split, item
    indices (in the dataset, 0-based) and, for a folder of files, the file. Not a ConfigError:
    the run directory holds what was written before it (``last.pt``) and is left as it is."""

    def __init__(self, split: str, indices: Sequence[int], cause: str, path: str | None = None, fix: str = "") -> None:
        self.split, self.indices, self.cause, self.path, self.fix = split, tuple(indices), cause, path, fix
        shown = ", ".join(map(str, indices[:MAX_NAMED_ITEMS]))
        if len(indices) > MAX_NAMED_ITEMS:
            shown += f", ... ({len(indices)} in all)"
        items = f"item {shown}" if len(indices) == 1 else f"items {shown}"
        super().__init__(f"{split} {items}{f' ({path})' if path else ''}: {cause}{f'; {fix}' if fix else ''}")

    def __reduce__(self) -> tuple:
        # A DataLoader worker sends it to the training process pickled: rebuilt from its parts.
        return DataError, (self.split, self.indices, self.cause, self.path, self.fix)


class NoSpace(OSError):
    """Checkpoints do not fit on the disk of ``directory``; the files already there are intact."""

    def __init__(self, directory: Path, *, needed: int, free: int, what: str = "a checkpoint") -> None:
        super().__init__(errno.ENOSPC, f"no space left in {directory}: {format_bytes(needed)} needed for {what}, "
                                       f"{format_bytes(free)} free; free some space, then run again with trainer.resume=auto")
        self.directory, self.needed, self.free = directory, needed, free

    def __str__(self) -> str:
        return self.strerror


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; the current update finished and ``last.pt`` was written."""

    def __init__(self, signal_name: str, update: int) -> None:
        super().__init__(f"stopped by {signal_name} after {update} updates")
        self.signal_name, self.update = signal_name, update


class NonFiniteStop(Exception):
    """``trainer.nonfinite=stop`` saw a NaN/inf; ``last.pt`` holds the last finite parameters."""


class GradSpikeStop(NonFiniteStop):
    """``trainer.grad_spike.action=stop`` saw a spike; the spiking updates were skipped, so
    ``last.pt`` holds parameters no spike reached."""


class NonFiniteError(RuntimeError):
    """``trainer.nonfinite=raise`` saw a NaN/inf: a crash with its traceback, for debugging."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its status and the exit code of ``python -m trainer``."""

    status: str
    exit_code: int


#: The first row whose exception type matches decides (subclasses before their bases).
OUTCOMES: tuple[tuple[type[BaseException], Outcome], ...] = (
    (Preempted, Outcome("preempted", EXIT_PREEMPTED)),
    (GradSpikeStop, Outcome("stopped_grad_spike", EXIT_STOPPED)),
    (NonFiniteStop, Outcome("stopped_nonfinite", EXIT_STOPPED)),
    (ConfigError, Outcome("failed", EXIT_CONFIG)),
    (DataError, Outcome("failed", EXIT_CONFIG)),
)


def outcome(error: BaseException | None) -> Outcome:
    """The status and exit code of a run that raised ``error``; None: it ended as planned
    (``completed``, or the status of the control that ended it: ``early_stopped``)."""
    if error is None:
        return Outcome("completed", 0)
    if is_out_of_space(error):
        return Outcome("failed", EXIT_NO_SPACE)
    return next((found for kind, found in OUTCOMES if isinstance(error, kind)), Outcome("failed", EXIT_CRASH))


def is_out_of_space(error: BaseException) -> bool:
    """A full disk or an exhausted quota, whoever raised it (a checkpoint's write, a log's)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def sweep_exit_code(statuses: set[str]) -> int:
    """What a finished sweep exits with: 0 if every job finished (early stopping included); else
    2 if a job failed (as one run with a bad config does), 4 if one stopped on a non-finite loss or
    a gradient-norm spike (as one run does), and 1 for any other unfinished job."""
    if any(status.startswith("failed") for status in statuses):
        return EXIT_CONFIG
    if statuses & {"stopped_nonfinite", "stopped_grad_spike"}:
        return EXIT_STOPPED
    return 0 if statuses <= set(FINISHED) else EXIT_CRASH


def refuse(error: ConfigError | str) -> NoReturn:
    """How every door refuses bad input: one line on stderr, exit code 2."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


class OneLineParser(argparse.ArgumentParser):
    """The tools' argument parser: a missing or malformed argument is refused as every door refuses
    bad input (argparse's own error prints its usage line first: two lines)."""

    def error(self, message: str) -> NoReturn:
        refuse(f"{message} (see {self.prog} --help)")


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(key, message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, message)


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
