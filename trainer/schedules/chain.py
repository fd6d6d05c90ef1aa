"""``schedule=chain``: registry schedules one after another, each over its own stretch of t.

``schedule.phases`` is a list; each phase is a registry schedule's ``name`` with that schedule's
own parameters (checked against its declarations, as ``schedule.*`` are), a length and,
optionally, a peak LR:

- Length: ``steps`` (in ``schedule.interval`` units) or ``fraction`` of ``total_steps`` (rounded;
  it may round to 0, and the phase is then skipped). One phase, usually the last, may give neither
  and take the rest. The lengths must add up to ``total_steps``.
- Peak: ``lr`` (absolute) or ``lr_ratio`` (× ``optimizer.lr``). Left out, it is where the previous
  phase ended, i.e. that phase's value at its own t = its length (a decay's floor, a warmup's peak),
  so joins are continuous; the first phase's is ``optimizer.lr``.
- Inside phase i, which starts at t = s_i, the schedule sees t − s_i out of its own length: it is
  exactly schedule ``name`` with T = the phase's length and η = its peak, without a generic warmup
  (a warmup is a phase of its own: ``linear_warmup``). Past the end the last phase goes on as the
  schedule alone would (a decay holds its floor).
- Momentum / beta1: a phase whose schedule moves it (``onecycle``) moves it; every other phase
  holds the value the nearest such phase ends with (before it: starts with), so it is continuous
  too. With no such phase the optimizer's own momentum is left alone.
- A ``plateau`` phase must be the last one, since what follows its cuts cannot be known before the
  run. It sees only the validations from its first update on (the first sets its baseline), so no
  cut can happen during the phases before it, e.g. a warmup: what PyTorch's ``SequentialLR`` cannot
  do with ``ReduceLROnPlateau`` (pytorch/pytorch#68978).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from trainer.errors import ConfigError
from trainer.params import Param, check_params
from trainer.plan import warmup_length
from trainer.schedules.registry import build_schedule, register_composite, schedule_names, schedule_params, spec_of
from trainer.schedules.schedule import Schedule

#: The keys every phase may have besides its schedule's own parameters.
PHASE_KEYS: dict[str, Param] = {
    "steps": Param(None, "the phase's length, in schedule.interval units", int, low=1, extra=(None,)),
    "fraction": Param(None, "the phase's length: round(fraction × total_steps)", float, low=0, high=1, extra=(None,)),
    "lr": Param(None, "the phase's peak LR η; null: where the previous phase ended", float, low=0, extra=(None,)),
    "lr_ratio": Param(None, "the phase's peak LR as a multiple of optimizer.lr", float, low=0, extra=(None,)),
}

#: ``schedule.phases``' default (conf/schedule/chain.yaml): a 5% warmup, then cosine to 0.
DEFAULT_PHASES = ({"name": "linear_warmup", "fraction": 0.05}, {"name": "cosine"})


def phase_names() -> list[str]:
    """The registry schedules a phase may be."""
    return [name for name in schedule_names() if spec_of(name).not_a_phase is None]


def check_phases(values: Mapping[str, Any], prefix: str) -> None:
    """Check every phase of ``values["phases"]`` with its schedule's declarations and the phase
    keys; the lengths are checked against the run's when the chain is built."""
    phases = list(values["phases"])
    open_ended = []
    for i, phase in enumerate(phases):
        where = f"{prefix}.phases.{i}"
        name = phase.get("name")
        if name in schedule_names() and spec_of(name).not_a_phase is not None:
            raise ConfigError(f"{where}.name", f"{name} cannot be a chain phase: {spec_of(name).not_a_phase}")
        Param(None, "the phase's schedule", str, choices=tuple(phase_names())).check(name, f"{where}.name")
        own = {str(k): v for k, v in phase.items() if k != "name"}
        check_params({**PHASE_KEYS, **schedule_params(name)}, own, where, owner=f"chain phase {i} ({name})")
        for a, b in (("steps", "fraction"), ("lr", "lr_ratio")):
            if own.get(a) is not None and own.get(b) is not None:
                raise ConfigError(f"{where}.{b}", f"give {a} or {b}, not both")
        if own.get("steps") is None and own.get("fraction") is None:
            open_ended.append(i)
        if spec_of(name).metric_driven and i != len(phases) - 1:
            raise ConfigError(
                f"{where}.name",
                "a plateau phase must be the last: its cuts follow validation, so no later phase can start "
                "from a known LR",
            )
    if len(open_ended) > 1:
        raise ConfigError(
            f"{prefix}.phases.{open_ended[0]}.steps",
            f"phases {' and '.join(map(str, open_ended))} both leave out their length; only one may take the rest: "
            "give the others steps or fraction",
        )


def phase_lengths(phases: Sequence[Mapping[str, Any]], total_steps: int, unit: str) -> list[int]:
    """Each phase's length in t units; ConfigError, naming the phase, unless they add up to ``total_steps``."""
    lengths: list[int | None] = [
        p["steps"] if p.get("steps") is not None
        else round(p["fraction"] * total_steps) if p.get("fraction") is not None
        else None
        for p in phases
    ]
    fixed = sum(n for n in lengths if n is not None)
    rest = total_steps - fixed
    end = 0
    for i, (phase, length) in enumerate(zip(phases, lengths)):
        end += length if length is not None else max(rest, 0)
        if end > total_steps or (i == len(phases) - 1 and end < total_steps):
            given = "steps" if phase.get("steps") is not None else "fraction" if length is not None else "steps"
            what = f"{length} {unit}s" if length is not None else "the rest"
            raise ConfigError(
                f"schedule.phases.{i}.{given}",
                f"phase {i} ({phase['name']}, {what}) ends at {unit} {end}, but schedule.total_steps={total_steps}: "
                "the phases' lengths must add up to total_steps; change this phase's length, or leave out one "
                "phase's length so that it takes the rest",
            )
    return [n if n is not None else rest for n in lengths]


def _peak(phase: Mapping[str, Any], *, optimizer_lr: float, previous_end: float) -> float:
    if phase.get("lr") is not None:
        return float(phase["lr"])
    if phase.get("lr_ratio") is not None:
        return phase["lr_ratio"] * optimizer_lr
    return previous_end


def _bind_phase(phase: Mapping[str, Any], index: int, *, peak_lr: float, length: int) -> Schedule:
    """Phase ``index`` as the schedule it names, alone, over t = 0..length (errors keyed to the phase)."""
    own = {k: v for k, v in phase.items() if k not in PHASE_KEYS}
    try:
        return build_schedule(
            {"interval": "step", **own}, peak_lr=peak_lr, total_steps=length, updates_per_epoch=1, warmup_steps=0
        )
    except ConfigError as error:  # a fit check of the phase's schedule: say which phase
        key = error.key.replace("schedule", f"schedule.phases.{index}", 1)
        raise ConfigError(key, str(error).removeprefix(f"{error.key}: ")) from None


def _momentum_fn(
    schedules: Sequence[Schedule], starts: Sequence[int], lengths: Sequence[int]
) -> Callable[[int], float] | None:
    """Each phase's own momentum, or the nearest moving phase's end (before it: its start)."""
    moving = [i for i, s in enumerate(schedules) if s.momentum_fn is not None]
    if not moving:
        return None
    held = []  # what each phase that does not move it holds (unused for those that do)
    for i in range(len(schedules)):
        before = [j for j in moving if j <= i]
        j = before[-1] if before else moving[0]
        held.append(schedules[j].momentum_fn(lengths[j] if before else 0))

    def momentum(t: int) -> float:
        i = max(bisect.bisect_right(starts, t) - 1, 0)
        fn = schedules[i].momentum_fn
        return fn(t - starts[i]) if fn is not None else held[i]

    return momentum


def build_chain(
    cfg: Any, *, peak_lr: float, total_steps: int, updates_per_epoch: int, warmup_steps: int | None = None,
    lr_scale: float = 1.0, units_per_update: int = 1,
) -> Schedule:
    """Bind ``schedule=chain`` to a run (:func:`trainer.schedules.build_schedule`'s arguments; the
    phases are already checked); ``peak_lr`` is ``optimizer.lr``."""
    if warmup_steps is None:
        warmup_steps = warmup_length(cfg.get("warmup_steps") or 0, cfg.get("warmup_ratio"), total_steps)
    if warmup_steps:
        key = "schedule.warmup_ratio" if cfg.get("warmup_ratio") is not None else "schedule.warmup_steps"
        raise ConfigError(
            key, "a chain warms up in a phase of its own: leave the generic warmup out (schedule.warmup_steps=0, "
            "schedule.warmup_ratio=null) and start the phases with {name: linear_warmup, steps: W}",
        )
    phases = cfg.get("phases", DEFAULT_PHASES)
    phases = OmegaConf.to_container(phases, resolve=True) if OmegaConf.is_config(phases) else list(phases)
    lengths = phase_lengths(phases, total_steps, cfg["interval"])
    # A phase of no length never runs (its join mark would sit on the next one's).
    kept = [(i, p, n) for i, (p, n) in enumerate(zip(phases, lengths)) if n > 0]
    schedules, starts, start, previous_end = [], [], 0, peak_lr
    for index, phase, length in kept:
        peak = _peak(phase, optimizer_lr=peak_lr, previous_end=previous_end)
        schedules.append(_bind_phase(phase, index, peak_lr=peak, length=length))
        starts.append(start)
        start += length
        previous_end = schedules[-1].lr_fn(length)
    lengths_kept = [n for _, _, n in kept]

    def lr(t: int) -> float:
        i = max(bisect.bisect_right(starts, t) - 1, 0)
        return schedules[i].lr_fn(t - starts[i])

    last = schedules[-1]
    return Schedule(
        name="chain",
        interval=cfg["interval"],
        peak_lr=peak_lr,
        total_steps=total_steps,
        warmup_steps=0,
        updates_per_epoch=updates_per_epoch,
        lr_fn=lr,
        momentum_fn=_momentum_fn(schedules, starts, lengths_kept),
        plateau=last.plateau,
        monitor=last.monitor,
        lr_scale=lr_scale,
        units_per_update=units_per_update,
        phases=tuple((p["name"], s) for (_, p, _), s in zip(kept, starts)),
        plateau_start=starts[-1] if last.plateau is not None else 0,
    )


register_composite(
    "chain",
    build_chain,
    check=check_phases,
    not_a_phase="a chain does not nest: list its phases here",
    phases=Param(DEFAULT_PHASES, "registry schedules one after another: name, own parameters, steps or fraction, "
                 "lr or lr_ratio", list, item=dict, min_items=1),
)
