"""Our schedules as a torch LR scheduler, for training loops that are not ours.

``trainer.lr_scheduler(optimizer, "warmup_cosine", total_steps=5000, warmup_steps=200)`` returns a
:class:`ScheduleLR`, a ``torch.optim.lr_scheduler.LambdaLR`` over the same pure function
``python -m trainer`` uses, with the same declared parameters, defaults and checks. torch's
convention holds: the LR of update t (0-based) is the schedule's LR at t when
``scheduler.step()`` is called once after each ``optimizer.step()``, as a plain loop, Lightning
(``interval: step``) and the Hugging Face Trainer all do.

LRs the schedules give in absolute terms (``min_lr``, ``warmup_start_lr``, the range test's
``min_lr``/``max_lr``) are those of the first parameter group, whose initial LR is η; every
other group keeps its ratio to the first (``LambdaLR`` scales each by its own initial LR).
``group_schedules`` gives groups schedules of their own and ``weight_decay_schedule`` scales the
groups' weight decay, as ``optimizer.param_groups[].schedule`` and
``optimizer.weight_decay_schedule`` do in the CLI (:mod:`trainer.schedules.named`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from trainer.errors import ConfigError, require
from trainer.params import Param, check_params
from trainer.plan import check_one_warmup, warmup_length
from trainer.schedules.named import DECAY_CHOICES, as_mapping, bind_named, check_group_schedule, check_named
from trainer.schedules.registry import COMMON, build_schedule, check_schedule_params, spec_of
from trainer.schedules.schedule import Schedule, set_momentum

#: Common schedule keys a Python caller may pass besides ``warmup_steps``: ``interval`` is
#: when the caller steps, and ``total_steps`` is an argument of its own.
_CALLER_KEYS = ("warmup_ratio", "warmup_from_zero", "warmup_start_lr", "temperature", "min_lr_ratio")

_TOTAL_STEPS = Param(None, "T: the scheduler.step() calls the schedule spans", int, low=1)


class ScheduleLR(LambdaLR):
    """``LambdaLR`` whose multiplier is ``schedule.lr(t) / η``; also sets the momentum (SGD) or
    beta1 (Adam) of every group where the schedule moves it (onecycle).

    ``state_dict`` holds torch's step count and base LRs plus the schedule's definition;
    :meth:`load_state_dict` refuses the state of another schedule.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, definition: dict[str, Any]) -> None:
        self.schedule, self.definition = schedule, definition
        peak = schedule.peak_lr
        # The λ each group's scheduled weight decay scales (read before LambdaLR's first step sets it).
        self.base_weight_decays = [group.get("weight_decay") for group in optimizer.param_groups]
        owns = [self._own(index) for index in range(len(optimizer.param_groups))]
        super().__init__(optimizer, [lambda t, own=own: own.lr(t) / peak for own in owns])

    def _own(self, index: int) -> Schedule:
        """The schedule group ``index`` follows: its own (``group_schedules``, by group index here), else the main one."""
        return self.schedule.group_schedules.get(index, self.schedule)

    def step(self, epoch: int | None = None) -> None:  # torch's signature; epoch is deprecated there
        super().step(epoch)
        momentum = self.schedule.momentum(self.last_epoch)
        for index, group in enumerate(self.optimizer.param_groups):
            if momentum is not None:
                set_momentum(group, momentum)
            if self.schedule.scheduled_decay:
                factor = self.schedule.decay_factor(self._own(index), self.last_epoch)
                group["weight_decay"] = self.base_weight_decays[index] * factor

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        del state["schedule"]  # rebuilt from the definition; closures do not pickle
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("definition") != self.definition:
            raise ValueError(
                f"the state is of schedule {state_dict.get('definition')}, this scheduler runs {self.definition}: "
                "build it with the same name, lengths and parameters"
            )
        super().load_state_dict(state_dict)


def lr_scheduler(
    optimizer: torch.optim.Optimizer, name: str, *, total_steps: int, warmup_steps: int | None = None,
    group_schedules: Mapping[int, str | Mapping[str, Any]] | None = None,
    weight_decay_schedule: str | Mapping[str, Any] = "none", **params: Any,
) -> ScheduleLR:
    """Schedule ``name`` of our registry as a torch scheduler stepped once per update.

    ``total_steps`` (T) and ``warmup_steps`` (W) count ``scheduler.step()`` calls; ``params`` are
    the schedule's own parameters (``min_lr``, ``gamma``, ...) and the common ``warmup_ratio``,
    ``warmup_from_zero``, ``warmup_start_lr``, ``temperature``, ``min_lr_ratio``. Whatever is left out takes the
    default declared with the schedule, which ``conf/schedule/NAME.yaml`` holds too (``warmup_cosine``
    warms up for round(T / 14) steps unless ``warmup_steps`` or a ``warmup_ratio`` is given). η is the first
    group's LR. ``group_schedules`` maps a group's index to its own schedule (a name, or ``{name:
    ..., its keys}``) and ``weight_decay_schedule`` is ``none``, ``lr`` or a schedule, bound as the
    CLI binds them (:mod:`trainer.schedules.named`: the same T, W and warmup unless given). Raises
    :class:`~trainer.errors.ConfigError` for an unknown name, parameter or
    value; ``plateau``, which follows validation metrics, is refused in favour of torch's
    ``ReduceLROnPlateau`` (as a chain's plateau phase is).
    """
    spec = spec_of(name)
    if spec.metric_driven:
        defaults = ", ".join(f"{k}={p.default!r}" for k, p in spec.params.items() if k != "monitor")
        raise ConfigError(
            "schedule",
            f"{name} cuts the LR when a validation metric stalls, so it is no function of the step count: "
            f"use torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, {defaults}) (our plateau's defaults) "
            "and call scheduler.step(val_loss) after each validation",
        )
    common = {k: params.pop(k) for k in _CALLER_KEYS if k in params}
    if warmup_steps is None:  # the schedule's own, unless a ratio replaces it
        warmup_steps = 0 if common.get("warmup_ratio") is not None else spec.common_defaults["warmup_steps"]
    check_params({k: COMMON[k] for k in ("warmup_steps", *_CALLER_KEYS)}, {"warmup_steps": warmup_steps, **common},
                 "schedule", owner="lr_scheduler")
    _TOTAL_STEPS.check(total_steps, "schedule.total_steps")
    check_schedule_params(name, params)
    check_one_warmup(warmup_steps, common.get("warmup_ratio"))
    warmup_steps = warmup_length(warmup_steps, common.get("warmup_ratio"), total_steps)
    definition = {
        **spec.common_defaults, **common, "name": name, "interval": "step",
        "warmup_steps": warmup_steps, "warmup_ratio": None, "total_steps": total_steps, **params,
    }
    peak = optimizer.param_groups[0]["lr"]
    schedule = build_schedule(
        definition, peak_lr=peak, total_steps=total_steps, updates_per_epoch=1, warmup_steps=warmup_steps,
        lr_scale=definition["temperature"],
    )
    if schedule.plateau is not None:  # a chain's last phase
        raise ConfigError(
            "schedule.phases", "a plateau phase cuts the LR when a validation metric stalls, which LambdaLR cannot "
            "follow: train with python -m trainer, or chain the fixed phases here and step torch's ReduceLROnPlateau after",
        )
    if group_schedules or weight_decay_schedule != "none":  # a definition without them stays as it was
        schedule = _bind_named(optimizer, schedule, definition, group_schedules=group_schedules or {},
                               weight_decay_schedule=weight_decay_schedule)
        definition["group_schedules"] = {index: as_mapping(value) for index, value in (group_schedules or {}).items()}
        definition["weight_decay_schedule"] = as_mapping(weight_decay_schedule)
    return ScheduleLR(optimizer, schedule, definition)


def _bind_named(
    optimizer: torch.optim.Optimizer, schedule: Schedule, definition: dict[str, Any], *,
    group_schedules: Mapping[int, Any], weight_decay_schedule: Any,
) -> Schedule:
    """``schedule`` with the groups' own schedules (by group index) and the weight decay's, checked
    and bound beside it as the CLI does (errors keyed ``group_schedules.I`` and ``weight_decay_schedule``)."""
    groups = optimizer.param_groups
    bind = functools.partial(bind_named, run=definition, peak_lr=schedule.peak_lr, total_steps=schedule.total_steps,
                             warmup_steps=schedule.warmup_steps, lr_scale=schedule.lr_scale)
    for index, value in group_schedules.items():
        key = f"group_schedules.{index}"
        require(type(index) is int and 0 <= index < len(groups), "group_schedules",
                f"{index!r} is not a group of this optimizer, whose groups are 0 to {len(groups) - 1}")
        require(not spec_of(schedule.name).absolute, key, f"{schedule.name} sweeps every group's LR: no group may have its own")
        check_group_schedule(value, key, interval="step", peak_lr=schedule.peak_lr)
    decay = weight_decay_schedule
    if decay != "none":
        require(all("weight_decay" in group for group in groups), "weight_decay_schedule",
                f"{type(optimizer).__name__} has no weight_decay to schedule: leave it none")
        require(decay != "lr" or not spec_of(schedule.name).absolute, "weight_decay_schedule",
                f"{schedule.name} gives absolute LRs, which are no shape for the weight decay")
    if decay not in DECAY_CHOICES:
        check_named(decay, "weight_decay_schedule", interval="step", peak_lr=schedule.peak_lr)
    return dataclasses.replace(
        schedule, group_schedules={index: bind(value, f"group_schedules.{index}") for index, value in group_schedules.items()},
        decay_follows_lr=decay == "lr", decay_shape=bind(decay, "weight_decay_schedule") if decay not in DECAY_CHOICES else None,
    )
