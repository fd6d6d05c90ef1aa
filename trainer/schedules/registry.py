"""The schedule registry: name -> pure function of the update (or epoch) index, and binding a
schedule config to a run.

Conventions, shared by every schedule:

- ``t`` is the 0-based index of the optimizer update (``interval=step``) or of the epoch
  (``interval=epoch``) that is about to run, or the examples or tokens trained on before it
  (``sample``, ``token``), or the seconds of training before it (``time``, a float:
  :meth:`~trainer.schedules.schedule.Schedule.position`). Update ``t`` uses the LR the schedule gives at ``t``
  (seed 000's table: warmup_cosine gives 0 at t=0 and the peak at t=W).
- A schedule function returns the absolute LR for a reference group whose base LR is the peak
  ``peak_lr`` (η, ``optimizer.lr``). The trainer scales every parameter group by its own base LR:
  ``group_lr = group_base_lr * lr(t) / peak_lr``, so per-group LRs keep their ratios.
- Warmup is generic: with ``warmup_steps = W > 0`` the LR rises linearly from ``warmup_start_lr``
  (default 0; seeds 001 and 004 start "from 0 or a small value") to the value the decay function
  has at its own start, and the decay function then sees ``t - W`` out of ``T - W`` (seed 000's
  ``get_lr``). ``warmup_from_zero=False`` uses seed 003's ``(t + 1) / W`` ramp instead, which does
  not waste the first update on the start LR and reaches the peak at ``t = W - 1``.
- ``lr_scale`` (``schedule.temperature`` times the batch-size rule of ``optimizer.lr_scaling``,
  derived by :func:`trainer.plan.plan_run`) multiplies every LR the schedule gives: peak, floor
  and warmup alike, so a scaled schedule keeps its shape (seed 002's "temperature").
- Past the end (``t >= T``) decays hold their final value rather than wrapping around.
- Each schedule declares its parameters once, where it is registered (:class:`~trainer.params.Param`:
  default, type, range, doc). The functions themselves take every parameter explicitly; the
  defaults, the config checks and ``conf/schedule/*.yaml`` all follow the declaration."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import ListConfig

from trainer.errors import ConfigError
from trainer.monitor import check_mode
from trainer.params import Param, check_params, defaults
from trainer.plan import warmup_length
from trainer.schedules.plateau import ReduceOnPlateau
from trainer.schedules.schedule import Schedule

LRFunction = Callable[..., float]
#: ``fit(params, total_steps=T, warmup_steps=W)``: raises ConfigError when the parameters do not
#: fit the run's length (checked when the schedule is bound, before anything is written).
FitCheck = Callable[..., None]

#: Keys every schedule config has (conf/schedule_common.yaml), besides ``name``.
COMMON: dict[str, Param] = {
    "interval": Param("step", "what t, warmup_steps and total_steps count: optimizer updates, epochs, training "
                      "examples or tokens seen, or seconds of training", str,
                      choices=("step", "epoch", "sample", "token", "time")),
    "warmup_steps": Param(0, "W: linear warmup from warmup_start_lr, in t units; auto: round(T / 14), about 7% of the run",
                          int, low=0, extra=("auto",)),
    "warmup_ratio": Param(None, "W = round(warmup_ratio * total_steps) instead", float, low=0, high=1, extra=(None,)),
    "warmup_from_zero": Param(True, "ramp fraction t/W (seed 000); false: (t+1)/W (seed 003)", bool),
    "warmup_start_lr": Param(0.0, "LR the warmup starts from (seeds 001/004)", float, low=0),
    "total_steps": Param(None, "T in t units; null = derived from the run's length", int, low=1, extra=(None,)),
    "temperature": Param(1.0, "multiplies every LR of the schedule (seed 002)", float, low=0, low_open=True),
    "min_lr_ratio": Param(None, "the floor as a fraction of η: min_lr = min_lr_ratio × η, in place of min_lr", float,
                          low=0, high=1, extra=(None,)),
}
COMMON_KEYS = ("name", *COMMON)


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule: its pure function, its declared parameters, and what the run must
    know about it.

    - ``common``: its own defaults for common keys (``warmup_cosine`` warms up for ``auto``: T / 14; ``step``
      counts epochs), as its YAML and ``trainer.lr_scheduler`` both take them.
    - ``fit``: a check of its parameters against the run's length.
    - ``per_update``: its shape is defined per optimizer update (``interval=step`` only).
    - ``absolute``: it gives absolute LRs, ignoring η: no warmup, temperature or batch scaling.
    - ``run_length``: the parameter that sets the run's length in updates (the range test's).
    - ``not_a_phase``: why it cannot be a chain phase (None: it can).
    - ``momentum``: a function of the same arguments giving the momentum / beta1 it pairs with
      the LR when its ``cycle_momentum`` is true.
    - ``metric_driven``: validation cuts its LR (:class:`~trainer.schedules.plateau.ReduceOnPlateau`,
      built from its parameters but ``monitor``), so its LRs are known only as the run goes.

    A composite schedule (``chain``) has no function of its own: ``build`` binds it, taking
    :func:`build_schedule`'s arguments, and ``check(values, prefix)`` checks what its parameters
    hold beyond their declarations (the phases' own parameters).
    """

    fn: LRFunction | None
    params: Mapping[str, Param]
    common: Mapping[str, Any] = field(default_factory=dict)
    fit: FitCheck | None = None
    per_update: bool = False
    absolute: bool = False
    run_length: str | None = None
    not_a_phase: str | None = None
    momentum: LRFunction | None = None
    metric_driven: bool = False
    build: Callable[..., Schedule] | None = None
    check: Callable[[Mapping[str, Any], str], None] | None = None

    @property
    def common_defaults(self) -> dict[str, Any]:
        """Every common key's default for this schedule."""
        return {**defaults(COMMON), **self.common}


_REGISTRY: dict[str, ScheduleSpec] = {}


def register(
    name: str, *, common: Mapping[str, Any] | None = None, fit: FitCheck | None = None, per_update: bool = False,
    absolute: bool = False, run_length: str | None = None, not_a_phase: str | None = None,
    momentum: LRFunction | None = None, metric_driven: bool = False, **params: Param,
) -> Callable[[LRFunction], LRFunction]:
    """Add ``fn(t, *, peak_lr, total_steps, **params) -> lr`` under ``name`` with its parameters
    and flags (:class:`ScheduleSpec`).

    The function's keyword-only parameters must be exactly the declared ones (plus the common
    keys it reads, e.g. ``warmup_steps``, which it is given as bound to the run), so a
    declaration cannot drift from the code.
    """
    for key, value in (common or {}).items():
        COMMON[key].check(value, f"schedule {name!r}: common.{key}")

    def add(fn: LRFunction) -> LRFunction:
        taken = {
            p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("peak_lr", "total_steps", *COMMON)
        }
        if taken != set(params):
            raise TypeError(f"schedule {name!r}: {fn.__name__} takes {sorted(taken)}, declared {sorted(params)}")
        _REGISTRY[name] = ScheduleSpec(
            fn, dict(params), dict(common or {}), fit, per_update, absolute, run_length, not_a_phase, momentum,
            metric_driven,
        )
        return fn

    return add


def register_composite(
    name: str, build: Callable[..., Schedule], *, check: Callable[[Mapping[str, Any], str], None],
    not_a_phase: str, **params: Param,
) -> None:
    """Add a schedule made of registry schedules (``chain``): see :class:`ScheduleSpec`."""
    _REGISTRY[name] = ScheduleSpec(None, dict(params), not_a_phase=not_a_phase, build=build, check=check)


def schedule_names() -> list[str]:
    """Every registered schedule name, sorted."""
    return sorted(_REGISTRY)


def spec_of(name: str) -> ScheduleSpec:
    """The registered schedule ``name`` (unknown: ConfigError listing the known ones)."""
    if name not in _REGISTRY:
        raise ConfigError("schedule", f"unknown schedule {name!r}; known: {', '.join(schedule_names())}")
    return _REGISTRY[name]


def metric_driven(schedule: Mapping[str, Any]) -> bool:
    """Whether validation cuts this schedule config's LRs (``plateau``, or a chain ending in one)."""
    names = [schedule["name"], *(phase["name"] for phase in schedule.get("phases") or ())]
    return any(name in _REGISTRY and _REGISTRY[name].metric_driven for name in names)


def warmup_then(
    t: int,
    *,
    decay: Callable[[int, int], float],
    warmup_steps: int,
    total_steps: int,
    warmup_from_zero: bool = True,
    start_lr: float = 0.0,
    ramp: bool = True,
) -> float:
    """Linear warmup from ``start_lr`` over ``warmup_steps`` into ``decay(t - W, T - W)`` (seed
    000's ``get_lr`` when ``start_lr`` is 0).

    With ``ramp=False`` (momentum) the warmup holds the decay's starting value instead of
    scaling it: momentum is not warmed up from 0.
    """
    # A warmup as long as the run leaves the decay no length; the ramp still aims at its start
    # value (η for cosine), as seed 000's get_lr does, so give the decay a length of at least 1.
    decay_steps = max(total_steps - warmup_steps, 1)
    if t < warmup_steps:
        target = decay(0, decay_steps)
        if not ramp:
            return target
        return start_lr + (target - start_lr) * (t if warmup_from_zero else t + 1) / warmup_steps
    return decay(t - warmup_steps, decay_steps)


def _decay_fn(fn: LRFunction, peak_lr: float, params: dict[str, Any]) -> Callable[[int, int], float]:
    return lambda t, total: fn(t, peak_lr=peak_lr, total_steps=total, **params)


def schedule_params(name: str) -> Mapping[str, Param]:
    """The declared parameters of schedule ``name`` beyond the common keys (unknown: ConfigError)."""
    return spec_of(name).params


def check_schedule_params(name: str, values: Mapping[str, Any], prefix: str = "schedule") -> None:
    """Check the parameters of schedule ``name`` given in ``values`` (common keys excluded)."""
    spec = spec_of(name)
    check_params(spec.params, values, prefix, owner=f"schedule {name!r}")
    given = {**defaults(spec.params), **values}
    if spec.metric_driven:
        check_mode(given["monitor"], given["mode"], prefix)
    if spec.check is not None:
        spec.check(given, prefix)


def _bind_floor(name: str, spec: ScheduleSpec, params: dict[str, Any], peak_lr: float, ratio: float | None) -> None:
    """``min_lr`` from ``min_lr_ratio`` × η when that is set, and refused above η: a floor over the
    peak would make the "decay" climb (``schedule=warmup_cosine optimizer.lr=1e-6``, whose default
    floor is 1e-5)."""
    floors = "min_lr" in spec.params and not spec.absolute  # the range test's min_lr is its start, not a floor
    if ratio is not None:
        if not floors:
            whose = " (its phases set theirs)" if spec.build is not None else ""
            raise ConfigError("schedule.min_lr_ratio", f"schedule {name!r} has no floor (min_lr) to set{whose}: leave it null")
        params["min_lr"] = ratio * peak_lr
    if floors and params["min_lr"] > peak_lr:
        raise ConfigError("schedule.min_lr", f"{params['min_lr']:g} is above the peak LR η={peak_lr:g}, so the "
                                             "schedule would climb to it: set a floor at most η, e.g. "
                                             "schedule.min_lr_ratio=0.01")


def build_schedule(
    cfg: Any,
    *,
    peak_lr: float,
    total_steps: int,
    updates_per_epoch: int,
    warmup_steps: int | None = None,
    lr_scale: float = 1.0,
    units_per_update: int = 1,
) -> Schedule:
    """Bind a checked schedule config (``schedule.*``, see :func:`check_schedule_params`) to a run.

    ``total_steps`` and ``warmup_steps`` are in ``cfg.interval`` units; the caller derives them
    and ``lr_scale`` (:func:`trainer.plan.plan_run`) when the config leaves them to be derived;
    ``warmup_steps`` defaults to ``cfg.warmup_steps``; parameters the config leaves out take their
    declared defaults. Raises :class:`ConfigError` for parameters that do not fit ``total_steps``.
    """
    name = cfg["name"]
    spec = spec_of(name)
    if spec.build is not None:
        _bind_floor(name, spec, {}, peak_lr, cfg.get("min_lr_ratio"))
        return spec.build(cfg, peak_lr=peak_lr, total_steps=total_steps, updates_per_epoch=updates_per_epoch,
                          warmup_steps=warmup_steps, lr_scale=lr_scale, units_per_update=units_per_update)
    given = {k: v for k, v in cfg.items() if k not in COMMON_KEYS}
    # Lists come from YAML; the functions take tuples (hashable, and not changed in place).
    params = {k: tuple(v) if isinstance(v, (list, ListConfig)) else v for k, v in {**defaults(spec.params), **given}.items()}
    _bind_floor(name, spec, params, peak_lr, cfg.get("min_lr_ratio"))
    if warmup_steps is None:
        warmup_steps = warmup_length(cfg.get("warmup_steps") or 0, cfg.get("warmup_ratio"), total_steps)
    if spec.fit is not None:
        spec.fit(params, total_steps=total_steps, warmup_steps=warmup_steps)
    bound = {"warmup_steps": warmup_steps}  # common keys as this run binds them, for a function that reads one
    params.update({key: value for key, value in bound.items() if key in inspect.signature(spec.fn).parameters})
    plateau_state, monitor = None, None
    if spec.metric_driven:
        plateau_params = dict(params)
        monitor = plateau_params.pop("monitor")
        plateau_state = ReduceOnPlateau(peak_lr=peak_lr, **plateau_params)
    warmup = functools.partial(warmup_then, warmup_steps=warmup_steps, total_steps=total_steps)
    lr_fn = functools.partial(
        warmup, decay=_decay_fn(spec.fn, peak_lr, params), warmup_from_zero=bool(cfg.get("warmup_from_zero", True)),
        start_lr=float(cfg.get("warmup_start_lr") or 0.0),
    )
    momentum_fn = None
    if spec.momentum is not None and params["cycle_momentum"]:
        momentum = spec.momentum
        momentum_fn = functools.partial(warmup, decay=lambda t, total: momentum(t, total_steps=total, **params),
                                        ramp=False)
    return Schedule(
        name=name, interval=cfg["interval"], peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps,
        updates_per_epoch=updates_per_epoch, lr_fn=lr_fn, momentum_fn=momentum_fn, plateau=plateau_state,
        monitor=monitor, lr_scale=lr_scale, units_per_update=units_per_update,
    )
