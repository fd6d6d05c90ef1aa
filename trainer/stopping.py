"""Ending a run early on purpose: preemption signals, non-finite losses, gradient-norm spikes
(:mod:`trainer.grad_spike`) and early stopping on a validation metric.

Exit codes of ``python -m trainer``: 0 done, 1 crash, 2 config error (or a run directory that is
unusable or another run's), 3 stopped by a signal (``last.pt`` written: resume with
``trainer.resume=auto``), 4 stopped on a non-finite loss or a gradient-norm spike
(``trainer.grad_spike.action=stop``), 5 out of disk space (the checkpoints
already written are intact; :data:`trainer.errors.EXIT_NO_SPACE`). Early stopping is a normal end:
exit 0, status ``early_stopped``.
"""

from __future__ import annotations

import math
import signal
import threading
from types import FrameType

from trainer.params import Param

#: ``trainer.early_stopping.*``: read by :class:`EarlyStopping`.
EARLY_STOPPING: dict[str, Param] = {
    "monitor": Param("val/loss", "the validation metric watched", str, choices=("val/loss", "val/acc")),
    "mode": Param("min", "min: lower is better; max: higher is better", str, choices=("min", "max")),
    "patience": Param(None, "validations in a row without improvement before the run stops; null = off", int,
                      low=1, extra=(None,)),
    "min_delta": Param(0.0, "an improvement must beat the best value by more than this (metric units)", float,
                       low=0),
}

EXIT_PREEMPTED = 3
EXIT_NONFINITE = 4


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; the current update finished and ``last.pt`` was written."""

    def __init__(self, signal_name: str, update: int) -> None:
        super().__init__(f"stopped by {signal_name} after {update} updates")
        self.signal_name, self.update = signal_name, update


class NonFiniteStop(Exception):
    """``trainer.nonfinite=stop`` saw a NaN/inf; ``last.pt`` holds the last finite parameters."""


class GradSpikeStop(NonFiniteStop):
    """``trainer.grad_spike.action=stop`` saw a spike; the spiking updates were skipped, so
    ``last.pt`` holds parameters no spike reached. Exit code 4, as for a non-finite loss."""


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


class EarlyStopping:
    """``trainer.early_stopping``: stop once ``patience`` validations in a row fail to improve
    ``monitor`` by more than ``min_delta`` on its best value (lower with ``mode=min``, higher with
    ``max``). A non-finite value never improves. Its counters are checkpointed, so a resumed run
    reaches the same decision, and a run that stopped stays stopped.
    """

    def __init__(self, *, monitor: str, mode: str, patience: int, min_delta: float) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.best_update: int | None = None
        self.bad_validations = 0  # in a row, since the best one
        self.stopped_at: int | None = None  # updates done when it stopped

    def observe(self, value: float, updates_done: int) -> bool:
        """Take one validation's ``monitor`` value; True when the run should stop now."""
        sign = 1.0 if self.mode == "min" else -1.0
        if math.isfinite(value) and sign * (self.best - value) > self.min_delta:
            self.best, self.best_update, self.bad_validations = value, updates_done, 0
        else:
            self.bad_validations += 1
        if self.bad_validations >= self.patience:
            self.stopped_at = updates_done
        return self.stopped_at is not None

    def reason(self) -> str:
        best = "no finite value yet" if self.best_update is None else f"best {self.best:.4g} after {self.best_update} updates"
        return (f"early stopping: {self.monitor} did not improve by more than {self.min_delta:g} in "
                f"{self.bad_validations} validations ({best}); stopped after {self.stopped_at} updates")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_update": self.best_update, "bad_validations": self.bad_validations,
                "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_update = state["best"], state["best_update"]
        self.bad_validations, self.stopped_at = state["bad_validations"], state["stopped_at"]
