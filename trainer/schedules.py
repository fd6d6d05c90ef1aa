"""The schedule registry: name -> pure function of the update (or epoch) index.

Conventions, shared by every schedule:

- ``t`` is the 0-based index of the optimizer update (``interval=step``) or of the epoch
  (``interval=epoch``) that is about to run. Update ``t`` uses the LR the schedule gives at ``t``
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
  derived by :func:`trainer.config.plan_run`) multiplies every LR the schedule gives: peak, floor
  and warmup alike, so a scaled schedule keeps its shape (seed 002's "temperature").
- Past the end (``t >= T``) decays hold their final value rather than wrapping around.
- Each schedule declares its parameters once, where it is registered (:class:`~trainer.params.Param`:
  default, type, range, doc). The functions themselves take every parameter explicitly; the
  defaults, the config checks and ``conf/schedule/*.yaml`` all follow the declaration.

The only schedule with state is ``plateau``: it depends on validation metrics, so it is a small
class whose state (reductions so far) is saved with checkpoints.

``chain`` (:mod:`trainer.chain`) runs registry schedules one after another, each over its own
stretch of t; it registers itself at the end of this module.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.errors import ConfigError
from trainer.params import Param, check_params, defaults

LRFunction = Callable[..., float]
#: ``fit(params, total_steps=T, warmup_steps=W)``: raises ConfigError when the parameters do not
#: fit the run's length (checked when the schedule is bound, before anything is written).
FitCheck = Callable[..., None]

#: Keys every schedule config has (conf/schedule_common.yaml), besides ``name``.
COMMON: dict[str, Param] = {
    "interval": Param("step", "what t, warmup_steps and total_steps count", str, choices=("step", "epoch")),
    "warmup_steps": Param(0, "W: linear warmup from warmup_start_lr, in t units", int, low=0),
    "warmup_ratio": Param(None, "W = round(warmup_ratio * total_steps) instead", float, low=0, high=1, extra=(None,)),
    "warmup_from_zero": Param(True, "ramp fraction t/W (seed 000); false: (t+1)/W (seed 003)", bool),
    "warmup_start_lr": Param(0.0, "LR the warmup starts from (seeds 001/004)", float, low=0),
    "total_steps": Param(None, "T in t units; null = derived from the run's length", int, low=1, extra=(None,)),
    "temperature": Param(1.0, "multiplies every LR of the schedule (seed 002)", float, low=0, low_open=True),
}
COMMON_KEYS = ("name", *COMMON)


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule: its pure function, its declared parameters, its fit check.

    A composite schedule (``chain``) has no function of its own: ``build`` binds it, taking
    :func:`build_schedule`'s arguments, and ``check(values, prefix)`` checks what its parameters
    hold beyond their declarations (the phases' own parameters).
    """

    fn: LRFunction | None
    params: Mapping[str, Param]
    fit: FitCheck | None = None
    build: Callable[..., Schedule] | None = None
    check: Callable[[Mapping[str, Any], str], None] | None = None


_REGISTRY: dict[str, ScheduleSpec] = {}
_MOMENTUM: dict[str, LRFunction] = {}


def register(name: str, *, fit: FitCheck | None = None, **params: Param) -> Callable[[LRFunction], LRFunction]:
    """Add ``fn(t, *, peak_lr, total_steps, **params) -> lr`` under ``name`` with its parameters.

    The function's keyword-only parameters must be exactly the declared ones (plus the common
    keys it reads, e.g. ``warmup_steps``), so a declaration cannot drift from the code.
    """

    def add(fn: LRFunction) -> LRFunction:
        taken = {
            p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("peak_lr", "total_steps", *COMMON)
        }
        if taken != set(params):
            raise TypeError(f"schedule {name!r}: {fn.__name__} takes {sorted(taken)}, declared {sorted(params)}")
        _REGISTRY[name] = ScheduleSpec(fn, dict(params), fit)
        return fn

    return add


def register_composite(
    name: str, build: Callable[..., Schedule], *, check: Callable[[Mapping[str, Any], str], None], **params: Param
) -> None:
    """Add a schedule made of registry schedules (``chain``): see :class:`ScheduleSpec`."""
    _REGISTRY[name] = ScheduleSpec(None, dict(params), build=build, check=check)


def schedule_names() -> list[str]:
    """Every registered schedule name, sorted."""
    return sorted(_REGISTRY)


def _progress(t: int, total_steps: int) -> float:
    """Fraction of the decay done at index ``t``, clamped to [0, 1]."""
    return min(max(t / total_steps, 0.0), 1.0) if total_steps > 0 else 1.0


def _cosine_interp(start: float, end: float, fraction: float) -> float:
    """Half-cosine from ``start`` (fraction 0) to ``end`` (fraction 1)."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * fraction))


def _linear_interp(start: float, end: float, fraction: float) -> float:
    return start + (end - start) * fraction


def _min_lr(default: float = 0.0) -> Param:
    return Param(default, "the LR the decay ends at (the floor)", float, low=0)


def _decay_factor(default: float, doc: str) -> Param:
    return Param(default, doc, float, low=0, low_open=True, high=1)


@register("constant")
def constant(t: int, *, peak_lr: float, total_steps: int) -> float:
    """η at every t."""
    return peak_lr


@register(
    "linear_warmup",
    offset=Param(0, "0: the ramp t/T starts at 0 (seed 000); 1: (t+1)/(T+1), nanoGPT's", int, low=0),
)
def linear_warmup(t: int, *, peak_lr: float, total_steps: int, offset: int) -> float:
    """η·(t + offset)/(T + offset): a straight rise that reaches η at t = T and holds it after.

    As a chain's first phase it is a warmup whose end is where the next phase starts; ``offset=1``
    is nanoGPT's ``learning_rate * (it + 1) / (warmup_iters + 1)``, so no update runs at LR 0.
    """
    if t >= total_steps:
        return peak_lr
    return peak_lr * (t + offset) / (total_steps + offset)


@register(
    "step",
    step_size=Param(30, "t units between drops", int, low=1),
    gamma=_decay_factor(0.1, "factor per drop"),
)
def step(t: int, *, peak_lr: float, total_steps: int, step_size: int, gamma: float) -> float:
    """η·gamma^floor(t / step_size), as ``StepLR``."""
    return peak_lr * gamma ** (t // step_size)


@register(
    "multistep",
    milestones=Param((30, 60, 90), "t values where the LR drops", list, item=int, low=1, increasing=True),
    gamma=_decay_factor(0.1, "factor per milestone passed"),
)
def multistep(t: int, *, peak_lr: float, total_steps: int, milestones: tuple[int, ...], gamma: float) -> float:
    """η·gamma^(number of milestones <= t), as ``MultiStepLR``."""
    return peak_lr * gamma ** sum(1 for m in milestones if m <= t)


@register(
    "exponential",
    # Seed 000: 0 < γ < 1; a γ above 1 grows the LR without bound (it overflowed at update 309).
    gamma=Param(0.95, "factor per t unit", float, low=0, low_open=True, high=1, high_open=True),
)
def exponential(t: int, *, peak_lr: float, total_steps: int, gamma: float) -> float:
    """η·gamma^t, as ``ExponentialLR``."""
    return peak_lr * gamma**t


@register(
    "inverse_time",
    decay_rate=Param(1.0, "how many halvings' worth of decay per decay_steps", float, low=0),
    decay_steps=Param(100, "t units for the LR to halve when decay_rate=1", int, low=1),
)
def inverse_time(t: int, *, peak_lr: float, total_steps: int, decay_rate: float, decay_steps: int) -> float:
    """η / (1 + decay_rate·t / decay_steps) (Keras ``InverseTimeDecay``, not staircase)."""
    return peak_lr / (1.0 + decay_rate * t / decay_steps)


@register(
    "polynomial",
    # 2, not torch's 1: power 1 is the `linear` schedule already.
    power=Param(2.0, "exponent of (1 - t/T)", float, low=0, low_open=True),
    min_lr=_min_lr(),
)
def polynomial(t: int, *, peak_lr: float, total_steps: int, power: float, min_lr: float) -> float:
    """(η − min_lr)·(1 − t/T)^power + min_lr, as ``PolynomialLR`` with a floor."""
    return (peak_lr - min_lr) * (1.0 - _progress(t, total_steps)) ** power + min_lr


@register("linear", min_lr=_min_lr())
def linear(t: int, *, peak_lr: float, total_steps: int, min_lr: float) -> float:
    """Straight line from η at t=0 to min_lr at t=T (polynomial with power 1)."""
    return polynomial(t, peak_lr=peak_lr, total_steps=total_steps, power=1.0, min_lr=min_lr)


@register("cosine", min_lr=_min_lr())
def cosine(t: int, *, peak_lr: float, total_steps: int, min_lr: float) -> float:
    """min_lr + ½(η − min_lr)(1 + cos(πt/T)), as ``CosineAnnealingLR`` over one half period."""
    return _cosine_interp(peak_lr, min_lr, _progress(t, total_steps))


@register("quarter_cosine", min_lr=_min_lr())
def quarter_cosine(t: int, *, peak_lr: float, total_steps: int, min_lr: float) -> float:
    """min_lr + (η − min_lr)·cos(πt / 2T): a quarter cosine period, so the LR stays near η longer
    than the half-period ``cosine`` and falls fastest at the end (seed 002's ``lr_lambda`` after
    its warmup, with an optional floor)."""
    return min_lr + (peak_lr - min_lr) * math.cos(0.5 * math.pi * _progress(t, total_steps))


# warmup_cosine is cosine whose config defaults to a warmup (the generic warmup does the ramp):
# together they are seed 000's get_lr exactly, with its table's η_min = 1e-5.
register("warmup_cosine", min_lr=_min_lr(1e-5))(cosine)


@register(
    "cosine_restarts",
    T_0=Param(100, "first cycle length, t units", int, low=1),
    T_mult=Param(2, "each cycle this many times longer than the last", int, low=1),
    min_lr=_min_lr(),
)
def cosine_restarts(t: int, *, peak_lr: float, total_steps: int, T_0: int, T_mult: int, min_lr: float) -> float:
    """SGDR (Loshchilov & Hutter), closed form of ``CosineAnnealingWarmRestarts``.

    Cycle i lasts ``T_0 · T_mult^i`` units; within a cycle the LR is a cosine from η to min_lr.
    """
    if T_mult == 1:
        t_cur, t_i = t % T_0, T_0
    else:
        n = int(math.log(t / T_0 * (T_mult - 1) + 1, T_mult))
        t_cur = t - T_0 * (T_mult**n - 1) // (T_mult - 1)
        t_i = T_0 * T_mult**n
        if t_cur >= t_i:  # float log landed one cycle short at an exact boundary
            t_cur, t_i = t_cur - t_i, t_i * T_mult
    return _cosine_interp(peak_lr, min_lr, t_cur / t_i)


@register(
    "cyclic",
    min_lr=Param(1e-5, "the LR at the bottom of each cycle (CyclicLR's base_lr)", float, low=0),
    step_size_up=Param(200, "t units from min_lr up to η", int, low=1),
    step_size_down=Param(None, "t units back down; null = step_size_up", int, low=1, extra=(None,)),
    mode=Param("triangular", "amplitude: constant, halving per cycle, or × gamma^t", str,
               choices=("triangular", "triangular2", "exp_range")),
    gamma=_decay_factor(1.0, "exp_range: amplitude × gamma^t"),
)
def cyclic(
    t: int,
    *,
    peak_lr: float,
    total_steps: int,
    min_lr: float,
    step_size_up: int,
    step_size_down: int | None,
    mode: str,
    gamma: float,
) -> float:
    """Smith's cyclical LR between min_lr and η, as ``CyclicLR(base_lr=min_lr, max_lr=η)``.

    ``mode``: ``triangular`` (constant amplitude), ``triangular2`` (amplitude halves each cycle),
    ``exp_range`` (amplitude × gamma^t).
    """
    down = step_size_up if step_size_down is None else step_size_down
    cycle_len = step_size_up + down
    cycle = math.floor(1 + t / cycle_len)
    x = 1.0 + t / cycle_len - cycle
    up_ratio = step_size_up / cycle_len
    scale = x / up_ratio if x <= up_ratio else (x - 1) / (up_ratio - 1)
    height = (peak_lr - min_lr) * scale
    if mode == "triangular2":
        height /= 2.0 ** (cycle - 1)
    elif mode == "exp_range":
        height *= gamma**t
    return min_lr + height


def _onecycle_phases(total_steps: int, pct_start: float, three_phase: bool) -> list[float]:
    """Last update index of each phase, as ``OneCycleLR`` computes them."""
    if three_phase:
        return [pct_start * total_steps - 1, 2 * pct_start * total_steps - 2, total_steps - 1]
    return [pct_start * total_steps - 1, total_steps - 1]


def _onecycle_value(t: int, ends: list[float], values: list[float], anneal_strategy: str) -> float:
    """Interpolate within the phase holding t (the last phase also takes every later t)."""
    interp = _cosine_interp if anneal_strategy == "cos" else _linear_interp
    phase = next((i for i, end in enumerate(ends) if t <= end), len(ends) - 1)
    start = 0.0 if phase == 0 else ends[phase - 1]
    fraction = min((t - start) / (ends[phase] - start), 1.0)
    return interp(values[phase], values[phase + 1], fraction)


def _onecycle_fit(params: Mapping[str, Any], *, total_steps: int, warmup_steps: int) -> None:
    """Every phase needs at least one update of its own: its interpolation divides by its length."""
    length = max(total_steps - warmup_steps, 1)
    rise = params["pct_start"] * length
    phases = 3 if params["three_phase"] else 2
    if rise <= 1 or (phases == 3 and 2 * rise - 2 >= length - 1) or (phases == 2 and rise >= length):
        raise ConfigError(
            "schedule.pct_start",
            f"pct_start={params['pct_start']} of {length} updates leaves a phase of the {phases}-phase cycle "
            f"without updates: the rise must last more than 1 update and end before the last one"
            + (" (three_phase: pct_start < 0.5)" if phases == 3 else ""),
        )


def _momentum(default: float, doc: str) -> Param:
    return Param(default, doc, float, low=0, high=1, high_open=True)


@register(
    "onecycle",
    fit=_onecycle_fit,
    pct_start=Param(0.3, "fraction of T spent rising", float, low=0, low_open=True, high=1, high_open=True),
    div_factor=Param(25.0, "start LR = η / div_factor", float, low=0, low_open=True),
    final_div_factor=Param(1e4, "final LR = start LR / final_div_factor", float, low=0, low_open=True),
    anneal_strategy=Param("cos", "shape of every phase", str, choices=("cos", "linear")),
    three_phase=Param(False, "fall back to the start LR before the final anneal (fast.ai)", bool),
    cycle_momentum=Param(True, "momentum (SGD) or beta1 (AdamW) moves opposite to the LR", bool),
    base_momentum=_momentum(0.85, "momentum at the LR's peak"),
    max_momentum=_momentum(0.95, "momentum at the LR's start and end"),
)
def onecycle(
    t: int,
    *,
    peak_lr: float,
    total_steps: int,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
    anneal_strategy: str,
    three_phase: bool,
    cycle_momentum: bool,
    base_momentum: float,
    max_momentum: float,
) -> float:
    """Smith & Topin's 1cycle LR, as ``OneCycleLR(max_lr=η, total_steps=T)``.

    Starts at η/div_factor, rises to η over ``pct_start·T`` updates, then anneals to
    η/(div_factor·final_div_factor). Momentum (SGD) or Adam's beta1 moves the other way: see
    :func:`onecycle_momentum`.
    """
    initial = peak_lr / div_factor
    final = initial / final_div_factor
    values = [initial, peak_lr, initial, final] if three_phase else [initial, peak_lr, final]
    return _onecycle_value(t, _onecycle_phases(total_steps, pct_start, three_phase), values, anneal_strategy)


def onecycle_momentum(
    t: int,
    *,
    total_steps: int,
    pct_start: float,
    anneal_strategy: str,
    three_phase: bool,
    base_momentum: float,
    max_momentum: float,
    **_: Any,
) -> float:
    """The momentum (or beta1) that ``OneCycleLR`` pairs with the LR at update t."""
    if three_phase:
        values = [max_momentum, base_momentum, max_momentum, max_momentum]
    else:
        values = [max_momentum, base_momentum, max_momentum]
    return _onecycle_value(t, _onecycle_phases(total_steps, pct_start, three_phase), values, anneal_strategy)


_MOMENTUM["onecycle"] = onecycle_momentum


def _wsd_fit(params: Mapping[str, Any], *, total_steps: int, warmup_steps: int) -> None:
    if params["decay_steps"] > total_steps - warmup_steps:
        raise ConfigError(
            "schedule.decay_steps",
            f"decay of {params['decay_steps']} does not fit after {warmup_steps} warmup in total_steps={total_steps}",
        )


@register(
    "wsd",
    fit=_wsd_fit,
    decay_steps=Param(200, "t units of the final decay (0 = none)", int, low=0),
    decay_shape=Param("linear", "shape of the final decay (sqrt: MiniCPM)", str, choices=("linear", "cosine", "sqrt")),
    min_lr=_min_lr(),
)
def wsd(t: int, *, peak_lr: float, total_steps: int, decay_steps: int, decay_shape: str, min_lr: float) -> float:
    """Warmup-stable-decay: η until the last ``decay_steps`` units of T, then decay to min_lr.

    ``decay_shape``: ``linear``, ``cosine`` or ``sqrt`` (1 − sqrt(fraction), as in MiniCPM).
    """
    decay_start = total_steps - decay_steps
    if t < decay_start:
        return peak_lr
    fraction = _progress(t - decay_start, decay_steps)
    if decay_shape == "cosine":
        return _cosine_interp(peak_lr, min_lr, fraction)
    if decay_shape == "sqrt":
        return min_lr + (peak_lr - min_lr) * (1.0 - math.sqrt(fraction))
    return _linear_interp(peak_lr, min_lr, fraction)


def _inverse_sqrt_fit(params: Mapping[str, Any], *, total_steps: int, warmup_steps: int) -> None:
    if warmup_steps < 1:
        raise ConfigError(
            "schedule.warmup_steps",
            "inverse_sqrt uses the warmup length as its time scale: set schedule.warmup_steps >= 1",
        )


@register("inverse_sqrt", fit=_inverse_sqrt_fit)
def inverse_sqrt(t: int, *, peak_lr: float, total_steps: int, warmup_steps: int) -> float:
    """η·sqrt(W / (t + W)) for t counted after warmup, i.e. η·sqrt(W / max(t, W)) in absolute t.

    The Transformer's "Noam" decay; it takes the warmup length as its time scale.
    """
    return peak_lr * math.sqrt(warmup_steps / (t + warmup_steps))


def _range_test_fit(params: Mapping[str, Any], *, total_steps: int, warmup_steps: int) -> None:
    if not params["max_lr"] > params["min_lr"]:
        raise ConfigError(
            "schedule.max_lr",
            f"the range test needs 0 < min_lr < max_lr; got min_lr={params['min_lr']}, max_lr={params['max_lr']}",
        )


@register(
    "lr_range_test",
    fit=_range_test_fit,
    min_lr=Param(1e-6, "the sweep's first LR", float, low=0, low_open=True),
    max_lr=Param(1.0, "the sweep's last LR", float, low=0, low_open=True),
    num_steps=Param(200, "updates in the sweep (the run's length); 3 or more for a slope", int, low=3),
)
def lr_range_test(t: int, *, peak_lr: float, total_steps: int, min_lr: float, max_lr: float, num_steps: int) -> float:
    """Exponential sweep min_lr·(max_lr/min_lr)^(t/(num_steps−1)) (seed 003); ignores η."""
    return min_lr * (max_lr / min_lr) ** (t / (num_steps - 1))


@register(
    "plateau",
    monitor=Param("val/loss", "the validation metric watched", str, choices=("val/loss", "val/acc")),
    mode=Param("min", "min: lower is better; max: higher is better", str, choices=("min", "max")),
    factor=Param(0.1, "LR × factor at each cut", float, low=0, low_open=True, high=1, high_open=True),
    patience=Param(5, "validations without improvement before a cut (seed 003)", int, low=0),
    threshold=Param(1e-4, "relative improvement that counts", float, low=0),
    cooldown=Param(0, "validations to wait after a cut", int, low=0),
    min_lr=Param(0.0, "no cut goes below this LR", float, low=0),
)
def plateau(
    t: int,
    *,
    peak_lr: float,
    total_steps: int,
    monitor: str,
    mode: str,
    factor: float,
    patience: int,
    threshold: float,
    cooldown: int,
    min_lr: float,
) -> float:
    """η before any reduction; :class:`ReduceOnPlateau` (built from the same parameters)
    multiplies in the reductions made after each validation on ``monitor``."""
    return peak_lr


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
    if name not in _REGISTRY:
        raise ConfigError("schedule", f"unknown schedule {name!r}; known: {', '.join(schedule_names())}")
    return _REGISTRY[name].params


def check_schedule_params(name: str, values: Mapping[str, Any], prefix: str = "schedule") -> None:
    """Check the parameters of schedule ``name`` given in ``values`` (common keys excluded)."""
    params = schedule_params(name)
    check_params(params, values, prefix, owner=f"schedule {name!r}")
    check = _REGISTRY[name].check
    if check is not None:
        check({**defaults(params), **values}, prefix)


#: ``ReduceLROnPlateau``'s ``eps``: a cut that changes the LR by less than this is skipped.
PLATEAU_EPS = 1e-8


@dataclass
class ReduceOnPlateau:
    """``ReduceLROnPlateau`` as state: the LR factor drops when ``monitor`` stops improving.

    Stepped once per validation with the monitored metric. ``threshold`` is relative
    (``threshold_mode='rel'`` in torch). ``patience`` defaults to seed 003's 5 (torch's is 10).
    The state is the number of reductions so far plus the best metric and the patience/cooldown
    counters, all restored from checkpoints.
    """

    peak_lr: float
    mode: str
    factor: float
    patience: int
    threshold: float
    cooldown: int
    min_lr: float
    lr: float = field(init=False)
    best: float = field(init=False)
    num_bad_epochs: int = field(default=0, init=False)
    cooldown_counter: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.lr = self.peak_lr
        self.best = math.inf if self.mode == "min" else -math.inf

    def _improved(self, metric: float) -> bool:
        if self.mode == "min":
            return metric < self.best * (1.0 - self.threshold)
        return metric > self.best * (1.0 + self.threshold)

    def observe(self, metric: float) -> None:
        """Take one validation result; may lower :attr:`lr` by ``factor`` (not below min_lr)."""
        if self._improved(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            reduced = max(self.lr * self.factor, self.min_lr)
            if self.lr - reduced > PLATEAU_EPS:  # as torch: ignore cuts too small to matter
                self.lr = reduced
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def state_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("lr", "best", "num_bad_epochs", "cooldown_counter")}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class Schedule:
    """A resolved schedule: everything needed to give the LR (and momentum) of any update.

    ``interval='epoch'`` maps update index u to epoch ``u // updates_per_epoch``, so the LR is
    constant within an epoch and changes exactly at epoch boundaries.

    A chain's ``phases`` are (name, first t) of each phase; its plateau, if any, counts only the
    validations from ``plateau_start`` (in t units) on.
    """

    name: str
    interval: str
    peak_lr: float
    total_steps: int
    warmup_steps: int
    updates_per_epoch: int
    lr_fn: Callable[[int], float]
    momentum_fn: Callable[[int], float] | None = None
    plateau: ReduceOnPlateau | None = None
    monitor: str | None = None
    lr_scale: float = 1.0
    phases: tuple[tuple[str, int], ...] = ()
    plateau_start: int = 0

    def position(self, update: int) -> int:
        """The schedule index t of optimizer update ``update`` (0-based), in ``interval`` units."""
        return update if self.interval == "step" else update // self.updates_per_epoch

    def lr(self, update: int) -> float:
        """LR for the reference group (base LR = η) at optimizer update ``update``, times
        :attr:`lr_scale`."""
        t = self.position(update)
        value = self.lr_fn(t)
        if self.plateau is not None and t >= self.plateau_start:
            value *= self.plateau.lr / self.plateau.peak_lr
        return value * self.lr_scale

    def observe(self, metrics: Mapping[str, float], update: int) -> None:
        """Show the plateau the validation ``metrics`` taken after ``update`` updates; those from
        before a chain's plateau phase are not its business (no cut during a warmup)."""
        if self.plateau is not None and self.position(update) >= self.plateau_start:
            self.plateau.observe(metrics[self.monitor])

    def phase_starts(self) -> list[tuple[int, str]]:
        """(first update, name) of every phase of a chain after the first: where the plot marks a join."""
        per_t = 1 if self.interval == "step" else self.updates_per_epoch
        return [(start * per_t, name) for name, start in self.phases[1:]]

    def momentum(self, update: int) -> float | None:
        """Momentum / beta1 at update ``update``, or None when the schedule leaves it alone."""
        return None if self.momentum_fn is None else self.momentum_fn(self.position(update))

    def state_dict(self) -> dict:
        """The only state beyond the update count: the plateau's reductions so far (or None)."""
        return {"plateau": None if self.plateau is None else self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])


def set_momentum(group: dict[str, Any], momentum: float) -> None:
    """Give an optimizer parameter group the scheduled momentum: Adam's beta1, else SGD's momentum."""
    if "betas" in group:
        group["betas"] = (momentum, group["betas"][1])
    else:
        group["momentum"] = momentum


def build_schedule(
    cfg: Any,
    *,
    peak_lr: float,
    total_steps: int,
    updates_per_epoch: int,
    warmup_steps: int | None = None,
    lr_scale: float = 1.0,
) -> Schedule:
    """Bind a schedule config (``schedule.*``) to a run.

    ``total_steps`` and ``warmup_steps`` are in ``cfg.interval`` units; the caller derives them
    and ``lr_scale`` (:func:`trainer.config.plan_run`) when the config leaves them to be derived;
    ``warmup_steps`` defaults to ``cfg.warmup_steps``; parameters the config leaves out take their
    declared defaults. Raises :class:`ConfigError` for unknown names, parameters or values, and
    for parameters that do not fit ``total_steps``.
    """
    name = cfg["name"]
    given = {k: v for k, v in cfg.items() if k not in COMMON_KEYS}
    check_schedule_params(name, given)
    spec = _REGISTRY[name]
    if spec.build is not None:
        return spec.build(cfg, peak_lr=peak_lr, total_steps=total_steps, updates_per_epoch=updates_per_epoch,
                          warmup_steps=warmup_steps, lr_scale=lr_scale)
    params = {**defaults(spec.params), **given}
    if warmup_steps is None:
        warmup_steps = int(cfg.get("warmup_steps") or 0)
    if spec.fit is not None:
        spec.fit(params, total_steps=total_steps, warmup_steps=warmup_steps)
    if name == "inverse_sqrt":
        params["warmup_steps"] = warmup_steps
    if "milestones" in params:
        params["milestones"] = tuple(params["milestones"])
    plateau_state = None
    monitor = None
    if name == "plateau":
        plateau_params = dict(params)
        monitor = plateau_params.pop("monitor")
        plateau_state = ReduceOnPlateau(peak_lr=peak_lr, **plateau_params)
    decay = _decay_fn(spec.fn, peak_lr, params)
    bound = functools.partial(warmup_then, warmup_steps=warmup_steps, total_steps=total_steps)
    lr_fn = functools.partial(
        bound, decay=decay, warmup_from_zero=bool(cfg.get("warmup_from_zero", True)),
        start_lr=float(cfg.get("warmup_start_lr") or 0.0),
    )
    momentum_fn = None
    if name in _MOMENTUM and params["cycle_momentum"]:
        mom = _MOMENTUM[name]
        momentum_fn = functools.partial(bound, decay=lambda t, total: mom(t, total_steps=total, **params), ramp=False)
    return Schedule(
        name=name,
        interval=cfg["interval"],
        peak_lr=peak_lr,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        updates_per_epoch=updates_per_epoch,
        lr_fn=lr_fn,
        momentum_fn=momentum_fn,
        plateau=plateau_state,
        monitor=monitor,
        lr_scale=lr_scale,
    )


# Registers schedule=chain, which is built from the schedules above.
from trainer import chain as _chain  # noqa: E402, F401
