"""Preemption: the first SIGTERM/SIGINT becomes a request the loop honours after the current update."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.distributed import World


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

    def agreed(self, world: World) -> str | None:
        """The stop signal's name once any rank of ``world`` has one, on every rank at the same update."""
        if world.any(self.requested is not None):
            return self.requested or "a signal to another rank"
        return None

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
