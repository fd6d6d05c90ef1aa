"""``trainer.early_stopping``: stop once a validation metric stops improving (status
``early_stopped``, exit 0)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from trainer.controls import Control, Parts, Stop
from trainer.errors import ConfigError
from trainer.monitor import MODE, MONITOR, beats, check_mode, worst
from trainer.params import Param

KEYS = {
    "early_stopping": {
        "monitor": MONITOR,
        "mode": MODE,
        "patience": Param(None, "validations in a row without improvement before the run stops; null = off", int,
                          low=1, extra=(None,)),
        "min_delta": Param(0.0, "an improvement must beat the best value by more than this (metric units)", float,
                           low=0),
    },
}


def check(cfg: DictConfig, strategy: str) -> None:
    node = cfg.trainer.early_stopping
    if node.patience is not None:
        check_mode(node.monitor, node.mode, "trainer.early_stopping")


def build(cfg: DictConfig, parts: Parts) -> EarlyStopping | None:
    node = cfg.trainer.early_stopping
    return None if node.patience is None else EarlyStopping(**node)


class EarlyStopping(Control):
    """Stop once ``patience`` validations in a row fail to improve ``monitor`` by more than
    ``min_delta`` on its best value (lower with ``mode=min``, higher with ``max``). A non-finite
    value never improves. Its counters are checkpointed, so a resumed run reaches the same
    decision, and a run that stopped stays stopped.
    """

    name = "early_stopping"

    def __init__(self, *, monitor: str, mode: str, patience: int, min_delta: float) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best = worst(mode)
        self.best_update: int | None = None
        self.bad_validations = 0  # in a row, since the best one
        self.stopped_at: int | None = None  # updates done when it stopped

    def observe(self, value: float, updates_done: int) -> bool:
        """Take one validation's ``monitor`` value; True when the run should stop now."""
        if beats(value, self.best, self.mode, margin=self.min_delta):
            self.best, self.best_update, self.bad_validations = value, updates_done, 0
        else:
            self.bad_validations += 1
        if self.bad_validations >= self.patience:
            self.stopped_at = updates_done
        return self.stopped_at is not None

    def after_validation(self, metrics: Mapping[str, float], updates_done: int, *, last: bool) -> Stop | None:
        if last or not metrics:  # the last validation ends the run anyway
            return None
        if self.monitor not in metrics:  # val/acc of a model whose outputs are not class scores
            raise ConfigError("trainer.early_stopping.monitor",
                              f"validation gives {', '.join(metrics)}, not {self.monitor}: monitor one of those")
        return self._stop() if self.observe(metrics[self.monitor], updates_done) else None

    def ended(self) -> Stop | None:
        return None if self.stopped_at is None else self._stop()

    def _stop(self) -> Stop:
        best = "no finite value yet" if self.best_update is None else f"best {self.best:.4g} after {self.best_update} updates"
        reason = (f"early stopping: {self.monitor} did not improve by more than {self.min_delta:g} in "
                  f"{self.bad_validations} validations ({best}); stopped after {self.stopped_at} updates")
        return Stop(reason, status="early_stopped")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_update": self.best_update, "bad_validations": self.bad_validations,
                "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.best, self.best_update = state["best"], state["best_update"]
            self.bad_validations, self.stopped_at = state["bad_validations"], state["stopped_at"]
