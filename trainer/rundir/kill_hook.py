"""A test hook in the checkpoint write path: the kill tests SIGKILL a run in the middle of a write
to show that ``last.pt`` survives. Unset (always, outside those tests) it changes nothing.

``TRAINER_TEST_KILL_IN_SAVE=N:B`` makes the N-th checkpoint write (1-based) of this process
SIGKILL itself after B bytes of its temp file; a B past the file's end kills it after the other
names (``best.pt``, the numbered copy) are published and before ``last.pt`` is replaced.
"""

from __future__ import annotations

import os
import signal
from typing import BinaryIO

KILL_HOOK = "TRAINER_TEST_KILL_IN_SAVE"
_writes = 0


class Kill:
    """Where this write dies: after ``at_byte`` bytes, or never (None)."""

    def __init__(self, at_byte: int | None) -> None:
        self.at_byte = at_byte

    def wrap(self, file: BinaryIO) -> BinaryIO:
        return file if self.at_byte is None else _KillAfter(file, self.at_byte)  # type: ignore[return-value]

    def before_replace(self) -> None:
        if self.at_byte is not None:  # the whole file fit under the limit
            os.kill(os.getpid(), signal.SIGKILL)


def for_this_write() -> Kill:
    """Count one checkpoint write; where the hook kills it, if it does."""
    global _writes
    _writes += 1
    hook = os.environ.get(KILL_HOOK)
    if not hook:
        return Kill(None)
    nth, byte = (int(part) for part in hook.split(":"))
    return Kill(byte if nth == _writes else None)


class _KillAfter:
    """A file wrapper that SIGKILLs this process after ``limit`` bytes."""

    def __init__(self, file: BinaryIO, limit: int) -> None:
        self.file, self.left = file, limit

    def write(self, data: bytes) -> int:
        if len(data) >= self.left:
            self.file.write(data[: self.left])
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.left -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()
