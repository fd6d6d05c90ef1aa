"""Schedules named in ``optimizer.*``: a parameter-group rule's own LR schedule
(``optimizer.param_groups[].schedule``) and the weight decay's (``optimizer.weight_decay_schedule``).

Either names a registry schedule as ``schedule=`` does: a name (``constant``) or a mapping with its
parameters (``{name: wsd, decay_steps: 200}``). It is bound like the run's schedule: the same η
(``optimizer.lr``), ``schedule.interval``, ``total_steps``, warmup (its length W as the run derived
it, ``warmup_from_zero``, ``warmup_start_lr``) and LR scale (``schedule.temperature`` × the
batch-size rule), unless the mapping gives its own ``total_steps``, ``warmup_steps``,
``warmup_ratio``, ``warmup_from_zero``, ``warmup_start_lr`` or ``min_lr_ratio`` (lengths in the
run's units). A ``chain`` warms up in a phase of its own, so it takes no warmup from the run. Its
other parameters take their declared defaults, as ``schedule=NAME`` would give them.

- A group that follows its own schedule S trains at ``S.lr(u) × lr_scale`` at update u (its
  ``lr_scale``: its rule's and whatever else scales it, e.g. ``optimizer.lr_scales``).
- ``weight_decay_schedule`` multiplies each group's weight decay λ (no-decay groups keep 0) by a
  shape, an LR relative to its peak η × scale: ``none`` 1 (λ is constant; torch's AdamW, and SGD's
  L2 penalty, already take lr × λ off the weights at every update, seed 002's "weight decay
  effectiveness increases with learning rate"), ``lr`` the shape of the group's own LR schedule (λ
  itself follows the LR, so the decay per update goes as lr²: none at the warmup's start, little in
  a cooldown), a schedule: that schedule's shape (``{name: constant, warmup_steps: 500}`` fades the
  decay in; ``{name: cosine, min_lr_ratio: 0.1}`` lowers it to λ/10).

Refused, each in one line naming the key: a name the registry lacks or a parameter it does not
declare; ``interval`` or ``temperature`` (the run's: scale a group with its rule's ``lr_scale``);
a schedule that follows validation (``plateau``) or gives absolute LRs (the range test); a group
schedule that moves momentum (momentum is one per run: the run's schedule's); per-group schedules
when the run's own schedule is a plateau (its cuts would pass the groups that follow their own) or
the range test (it sweeps every group).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError, require
from trainer.params import check_params, defaults
from trainer.plan import RunPlan, check_one_warmup, warmup_length
from trainer.schedules.registry import (
    COMMON,
    COMMON_KEYS,
    build_schedule,
    check_schedule_params,
    metric_driven,
    schedule_names,
    spec_of,
)
from trainer.schedules.schedule import Schedule

DECAY_KEY = "optimizer.weight_decay_schedule"
#: ``optimizer.weight_decay_schedule``'s values besides a schedule.
DECAY_CHOICES = ("none", "lr")
#: Common keys that only the run's schedule sets, and why.
RUNS_OWN = {
    "interval": "a schedule named here counts in the run's schedule.interval: leave it out",
    "temperature": "the run's schedule.temperature scales every schedule of the run alike: leave it out (a group's LR "
                   "has its rule's lr_scale)",
}


def group_key(index: int) -> str:
    """The config key of rule ``index``'s own schedule."""
    return f"optimizer.param_groups.{index}.schedule"


def as_mapping(value: Any) -> dict[str, Any]:
    """A schedule named by its name alone or by a mapping, as a mapping: ``{name: ..., its keys}``."""
    if isinstance(value, str):
        return {"name": value}
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else dict(value)


@contextmanager
def keyed(key: str) -> Iterator[None]:
    """A ConfigError the registry raises about ``schedule.X`` is about ``key.X`` here."""
    try:
        yield
    except ConfigError as error:
        if error.key != "schedule" and not error.key.startswith("schedule."):
            raise
        raise ConfigError(key + error.key.removeprefix("schedule"), str(error).removeprefix(f"{error.key}: ")) from None


def check_named_schedules(optimizer: DictConfig, schedule: DictConfig) -> None:
    """Check every schedule named in ``optimizer.*`` against the registry and the run's (checked)
    ``schedule``; ConfigError naming the key otherwise."""
    owned = [(group_key(i), rule["schedule"]) for i, rule in enumerate(optimizer.get("param_groups") or ())
             if rule.get("schedule") is not None]
    for key, value in owned:
        check_group_schedule(value, key, interval=schedule.interval, peak_lr=optimizer.lr)
    run = spec_of(schedule.name)
    if owned and (metric_driven(schedule) or run.absolute):
        why = ("cuts the LR when validation stalls, and a group on its own schedule would not follow the cuts"
               if not run.absolute else "sweeps every group's LR to find a good one")
        raise ConfigError(owned[0][0], f"the run's schedule={schedule.name} {why}: use a schedule known in advance "
                                       "for the run (e.g. cosine), or no per-group schedules")
    decay = optimizer.get("weight_decay_schedule", "none")
    if decay == "lr":
        require(not run.absolute, DECAY_KEY, f"schedule={schedule.name} gives absolute LRs, which are no shape for "
                                             "the weight decay: use none, or a schedule name")
    elif decay not in DECAY_CHOICES:
        require(not isinstance(decay, str) or decay in schedule_names(), DECAY_KEY,
                f"got {decay!r}; expected none, lr, a schedule ({', '.join(schedule_names())}) or {{name: ..., its keys}}")
        check_named(decay, DECAY_KEY, interval=schedule.interval, peak_lr=optimizer.lr)


def check_group_schedule(value: Any, key: str, *, interval: str, peak_lr: float) -> None:
    """A group's own schedule: :func:`check_named`, and it may not move momentum."""
    moving = _moves_momentum(check_named(value, key, interval=interval, peak_lr=peak_lr))
    require(moving is None, f"{key}.{moving}", "momentum is one per run, the run's schedule's: a group's own "
                                               "schedule may not move it; set it to false")


def check_named(value: Any, key: str, *, interval: str, peak_lr: float) -> dict[str, Any]:
    """One named schedule (``value``, at config key ``key``), checked as ``schedule.*`` is, for a
    run that counts ``interval`` and peaks at ``peak_lr``; returns it as a mapping."""
    given = as_mapping(value)
    name_key = key if isinstance(value, str) else f"{key}.name"
    name = given.get("name")
    require(name is not None, name_key,
            f"got {value!r}, which names no schedule: give a registry schedule, e.g. {{name: cosine, min_lr_ratio: 0.1}}")
    require(isinstance(name, str) and name in schedule_names(), name_key,
            f"got {name!r}, not a registry schedule; known: {', '.join(schedule_names())}")
    for fixed, why in RUNS_OWN.items():
        require(fixed not in given, f"{key}.{fixed}", why)
    common = {k: given[k] for k in COMMON if k in given}
    with keyed(key):
        check_params(COMMON, common, key, owner=f"{key} (common keys)")
        check_one_warmup(common.get("warmup_steps", 0), common.get("warmup_ratio"))
        check_schedule_params(name, {k: v for k, v in given.items() if k not in COMMON_KEYS}, key)
    if "warmup_start_lr" in common:  # the run's own is checked with the run's schedule
        require(common["warmup_start_lr"] < peak_lr, f"{key}.warmup_start_lr",
                f"a warmup from {common['warmup_start_lr']} rises to the peak optimizer.lr={peak_lr}: start below it")
    spec = spec_of(name)
    require(not metric_driven(given), key, f"{name} cuts the LR when validation stalls, which only the run's own "
                                           "schedule can follow: name a schedule known in advance")
    require(not spec.absolute, key, f"{name} gives absolute LRs for a whole run: it can only be the run's schedule")
    for phase in (name, *(p["name"] for p in given.get("phases") or ())):
        require(not spec_of(phase).per_update or interval == "step", key,
                f"{phase} is defined per optimizer update, and the run counts schedule.interval={interval}")
    return given


def _moves_momentum(given: Mapping[str, Any]) -> str | None:
    """The key (below the schedule's) that makes a named schedule move momentum, or None."""
    for prefix, schedule in [("", given), *((f"phases.{i}.", p) for i, p in enumerate(given.get("phases") or ()))]:
        spec = spec_of(schedule["name"])
        if spec.momentum is not None and {**defaults(spec.params), **schedule}["cycle_momentum"]:
            return f"{prefix}cycle_momentum"
    return None


def bind_named_schedules(schedule: Schedule, cfg: DictConfig, plan: RunPlan) -> Schedule:
    """``schedule`` (the run's, bound) with the schedules named in ``cfg.optimizer`` bound beside it."""
    optimizer = cfg.optimizer
    bind = functools.partial(
        bind_named, run=cfg.schedule, peak_lr=optimizer.lr, total_steps=plan.total_steps,
        warmup_steps=plan.warmup_steps, updates_per_epoch=plan.updates_per_epoch, lr_scale=plan.lr_scale,
        units_per_update=plan.units_per_update,
    )
    groups = {i: bind(rule["schedule"], group_key(i))
              for i, rule in enumerate(optimizer.get("param_groups") or ()) if rule.get("schedule") is not None}
    decay = optimizer.get("weight_decay_schedule", "none")
    shape = bind(decay, DECAY_KEY) if decay not in DECAY_CHOICES else None
    return dataclasses.replace(schedule, group_schedules=groups, decay_follows_lr=decay == "lr", decay_shape=shape)


def bind_named(
    value: Any, key: str, *, run: Mapping[str, Any], peak_lr: float, total_steps: int, warmup_steps: int,
    updates_per_epoch: int = 1, lr_scale: float = 1.0, units_per_update: int = 1,
) -> Schedule:
    """One named schedule (``value``, checked) bound as the module docstring says, beside a run
    whose schedule config is ``run`` (its ``interval``, ``warmup_from_zero``, ``warmup_start_lr``)
    and whose derived lengths and scale are the other arguments; errors keyed to ``key``."""
    given = as_mapping(value)
    total = given.get("total_steps") or total_steps
    with keyed(key):
        if given.get("warmup_steps") is not None or given.get("warmup_ratio") is not None:
            warmup = warmup_length(given.get("warmup_steps") or 0, given.get("warmup_ratio"), total, unit=run["interval"])
        else:  # the run's, unless a chain, which warms up in a phase
            warmup = 0 if spec_of(given["name"]).build is not None else warmup_length(
                warmup_steps, None, total, unit=run["interval"])
        definition = {"interval": run["interval"], "warmup_from_zero": run["warmup_from_zero"],
                      "warmup_start_lr": run["warmup_start_lr"], **given}
        return build_schedule(
            definition, peak_lr=peak_lr, total_steps=total, updates_per_epoch=updates_per_epoch,
            warmup_steps=warmup, lr_scale=lr_scale, units_per_update=units_per_update,
        )
