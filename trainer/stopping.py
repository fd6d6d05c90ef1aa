"""Ending a run early on purpose: preemption signals and non-finite losses.

Exit codes of ``python -m trainer``: 0 done, 1 crash, 2 config error (or a run directory that is
unusable or another run's), 3 stopped by a signal (``last.pt`` written: resume with
``trainer.resume=auto``), 4 stopped on a non-finite loss, 5 out of disk space (the checkpoints
already written are intact; :data:`trainer.errors.EXIT_NO_SPACE`).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_PREEMPTED = 3
EXIT_NONFINITE = 4


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; the current update finished and ``last.pt`` was written."""

    def __init__(self, signal_name: str, update: int) -> None:
        super().__init__(f"stopped by {signal_name} after {update} updates")
        self.signal_name, self.update = signal_name, update


class NonFiniteStop(Exception):
    """``trainer.nonfinite=stop`` saw a NaN/inf; ``last.pt`` holds the last finite parameters."""


class NonFiniteError(RuntimeError):
    """``trainer.nonfinite=raise`` saw a NaN/inf."""


class StopOnSignal:
    """Turns the first SIGTERM/SIGINT into a request the loop honours after the current update.

    The second one is not caught: SIGINT raises KeyboardInterrupt at once and SIGTERM kills.
    Outside the main thread (where handlers cannot be installed) signals keep their default.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
