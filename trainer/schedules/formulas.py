"""The registered schedules: each a pure function of ``t`` with its parameters declared where it
is registered (conventions: :mod:`trainer.schedules.registry`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from trainer.errors import ConfigError
from trainer.monitor import MODE, MONITOR
from trainer.params import Param
from trainer.schedules.registry import register


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
    common={"interval": "epoch"},
    step_size=Param(30, "t units between drops", int, low=1),
    gamma=_decay_factor(0.1, "factor per drop"),
)
def step(t: int, *, peak_lr: float, total_steps: int, step_size: int, gamma: float) -> float:
    """η·gamma^floor(t / step_size), as ``StepLR``."""
    return peak_lr * gamma ** (t // step_size)


@register(
    "multistep",
    common={"interval": "epoch"},
    milestones=Param((30, 60, 90), "t values where the LR drops", list, item=int, low=1, increasing=True),
    gamma=_decay_factor(0.1, "factor per milestone passed"),
)
def multistep(t: int, *, peak_lr: float, total_steps: int, milestones: tuple[int, ...], gamma: float) -> float:
    """η·gamma^(number of milestones <= t), as ``MultiStepLR``."""
    return peak_lr * gamma ** sum(1 for m in milestones if m <= t)


@register(
    "exponential",
    common={"interval": "epoch"},
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


@register("quarter_cosine", common={"warmup_steps": "auto"}, min_lr=_min_lr())
def quarter_cosine(t: int, *, peak_lr: float, total_steps: int, min_lr: float) -> float:
    """min_lr + (η − min_lr)·cos(πt / 2T): a quarter cosine period, so the LR stays near η longer
    than the half-period ``cosine`` and falls fastest at the end (seed 002's ``lr_lambda`` after
    its warmup, with an optional floor)."""
    return min_lr + (peak_lr - min_lr) * math.cos(0.5 * math.pi * _progress(t, total_steps))


# warmup_cosine is cosine whose config defaults to a warmup (the generic warmup does the ramp):
# together they are seed 000's get_lr exactly, with its table's η_min = 1e-5.
register("warmup_cosine", common={"warmup_steps": "auto"}, min_lr=_min_lr(1e-5))(cosine)


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


# Seed 003: OneCycleLR steps after every update; stepped per epoch it would hold each LR for a
# whole epoch and reach its phases only at epoch ends.
@register(
    "onecycle",
    fit=_onecycle_fit,
    per_update=True,
    momentum=onecycle_momentum,
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




def _wsd_fit(params: Mapping[str, Any], *, total_steps: int, warmup_steps: int) -> None:
    if params["decay_steps"] > total_steps - warmup_steps:
        raise ConfigError(
            "schedule.decay_steps",
            f"decay of {params['decay_steps']} does not fit after {warmup_steps} warmup in total_steps={total_steps}",
        )


@register(
    "wsd",
    common={"warmup_steps": "auto"},
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


@register(
    "inverse_sqrt",
    common={"warmup_steps": 100},
    fit=_inverse_sqrt_fit,
    not_a_phase="it takes the generic warmup's length as its time scale: chain a linear_warmup and a polynomial or "
                "inverse_time decay instead",
)
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
    per_update=True,
    absolute=True,
    run_length="num_steps",
    not_a_phase="the range test sets the run's length itself: run it alone",
    min_lr=Param(1e-6, "the sweep's first LR", float, low=0, low_open=True),
    max_lr=Param(1.0, "the sweep's last LR", float, low=0, low_open=True),
    num_steps=Param(200, "updates in the sweep (the run's length); 3 or more for a slope", int, low=3),
)
def lr_range_test(t: int, *, peak_lr: float, total_steps: int, min_lr: float, max_lr: float, num_steps: int) -> float:
    """Exponential sweep min_lr·(max_lr/min_lr)^(t/(num_steps−1)) (seed 003); ignores η."""
    return min_lr * (max_lr / min_lr) ** (t / (num_steps - 1))


@register(
    "plateau",
    metric_driven=True,
    monitor=MONITOR,
    mode=MODE,
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
