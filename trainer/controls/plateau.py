"""Validation feeds ``schedule=plateau`` (alone or as a chain's last phase): each validation may cut
the LR, which applies from the very next update. Its keys are the schedule's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from trainer.controls import Control, Parts, Stop
from trainer.schedules.schedule import Schedule, apply_schedule

KEYS: dict[str, Any] = {}


def build(cfg: DictConfig, parts: Parts) -> PlateauFeedback | None:
    if parts.schedule.plateau is None:
        return None
    # trainer.resume_schedule=override continues with the new schedule: the old cuts are not its own.
    return PlateauFeedback(parts.schedule, parts.optimizer, restore=cfg.trainer.resume_schedule == "strict")


class PlateauFeedback(Control):
    """Shows each validation to the schedule's plateau and applies a cut at once."""

    name = "plateau"

    def __init__(self, schedule: Schedule, optimizer: torch.optim.Optimizer, *, restore: bool = True) -> None:
        self.schedule, self.optimizer, self.restore = schedule, optimizer, restore

    def after_validation(self, metrics: Mapping[str, float], updates_done: int, *, last: bool) -> Stop | None:
        if metrics:
            self.schedule.observe(metrics, updates_done)
            # A reduction applies from the very next update, not one step late.
            apply_schedule(self.optimizer, self.schedule, updates_done)
        return None

    def state_dict(self) -> dict[str, Any]:
        """The reductions so far: the only schedule state beyond the update count."""
        return self.schedule.plateau.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None and self.restore:
            self.schedule.plateau.load_state_dict(state)
