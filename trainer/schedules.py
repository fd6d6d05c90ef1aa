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

The only schedule with state is ``plateau``: it depends on validation metrics, so it is a small
class whose state (reductions so far) is saved with checkpoints.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.errors import ConfigError

LRFunction = Callable[..., float]

#: Keys every schedule config has; everything else is a parameter of the named function.
COMMON_KEYS = (
    "name", "interval", "warmup_steps", "warmup_ratio", "warmup_from_zero", "warmup_start_lr", "total_steps",
    "temperature",
)

_REGISTRY: dict[str, LRFunction] = {}
_MOMENTUM: dict[str, LRFunction] = {}


def register(name: str) -> Callable[[LRFunction], LRFunction]:
    """Add ``fn(t, *, peak_lr, total_steps, **params) -> lr`` to the registry under ``name``."""

    def add(fn: LRFunction) -> LRFunction:
        _REGISTRY[name] = fn
        return fn

    return add


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


@register("constant")
def constant(t: int, *, peak_lr: float, total_steps: int) -> float:
    """η at every t."""
    return peak_lr


@register("step")
def step(t: int, *, peak_lr: float, total_steps: int, step_size: int = 30, gamma: float = 0.1) -> float:
    """η·gamma^floor(t / step_size), as ``StepLR``."""
    return peak_lr * gamma ** (t // step_size)


@register("multistep")
def multistep(
    t: int, *, peak_lr: float, total_steps: int, milestones: tuple[int, ...] = (30, 60, 90), gamma: float = 0.1
) -> float:
    """η·gamma^(number of milestones <= t), as ``MultiStepLR``."""
    return peak_lr * gamma ** sum(1 for m in milestones if m <= t)


@register("exponential")
def exponential(t: int, *, peak_lr: float, total_steps: int, gamma: float = 0.95) -> float:
    """η·gamma^t, as ``ExponentialLR``."""
    return peak_lr * gamma**t


@register("inverse_time")
def inverse_time(
    t: int, *, peak_lr: float, total_steps: int, decay_rate: float = 1.0, decay_steps: int = 1
) -> float:
    """η / (1 + decay_rate·t / decay_steps) (Keras ``InverseTimeDecay``, not staircase)."""
    return peak_lr / (1.0 + decay_rate * t / decay_steps)


@register("polynomial")
def polynomial(t: int, *, peak_lr: float, total_steps: int, power: float = 1.0, min_lr: float = 0.0) -> float:
    """(η − min_lr)·(1 − t/T)^power + min_lr, as ``PolynomialLR`` with a floor."""
    return (peak_lr - min_lr) * (1.0 - _progress(t, total_steps)) ** power + min_lr


@register("linear")
def linear(t: int, *, peak_lr: float, total_steps: int, min_lr: float = 0.0) -> float:
    """Straight line from η at t=0 to min_lr at t=T (polynomial with power 1)."""
    return polynomial(t, peak_lr=peak_lr, total_steps=total_steps, power=1.0, min_lr=min_lr)


@register("cosine")
def cosine(t: int, *, peak_lr: float, total_steps: int, min_lr: float = 0.0) -> float:
    """min_lr + ½(η − min_lr)(1 + cos(πt/T)), as ``CosineAnnealingLR`` over one half period."""
    return _cosine_interp(peak_lr, min_lr, _progress(t, total_steps))


@register("quarter_cosine")
def quarter_cosine(t: int, *, peak_lr: float, total_steps: int, min_lr: float = 0.0) -> float:
    """min_lr + (η − min_lr)·cos(πt / 2T): a quarter cosine period, so the LR stays near η longer
    than the half-period ``cosine`` and falls fastest at the end (seed 002's ``lr_lambda`` after
    its warmup, with an optional floor)."""
    return min_lr + (peak_lr - min_lr) * math.cos(0.5 * math.pi * _progress(t, total_steps))


# warmup_cosine is cosine whose config defaults to a warmup (the generic warmup does the ramp):
# together they are seed 000's get_lr exactly.
register("warmup_cosine")(cosine)


@register("cosine_restarts")
def cosine_restarts(
    t: int, *, peak_lr: float, total_steps: int, T_0: int = 10, T_mult: int = 1, min_lr: float = 0.0
) -> float:
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


@register("cyclic")
def cyclic(
    t: int,
    *,
    peak_lr: float,
    total_steps: int,
    min_lr: float = 0.0,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
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


@register("onecycle")
def onecycle(
    t: int,
    *,
    peak_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    three_phase: bool = False,
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
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
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    three_phase: bool = False,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    **_: Any,
) -> float:
    """The momentum (or beta1) that ``OneCycleLR`` pairs with the LR at update t."""
    if three_phase:
        values = [max_momentum, base_momentum, max_momentum, max_momentum]
    else:
        values = [max_momentum, base_momentum, max_momentum]
    return _onecycle_value(t, _onecycle_phases(total_steps, pct_start, three_phase), values, anneal_strategy)


_MOMENTUM["onecycle"] = onecycle_momentum


@register("wsd")
def wsd(
    t: int,
    *,
    peak_lr: float,
    total_steps: int,
    decay_steps: int = 0,
    decay_shape: str = "linear",
    min_lr: float = 0.0,
) -> float:
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


@register("inverse_sqrt")
def inverse_sqrt(t: int, *, peak_lr: float, total_steps: int, warmup_steps: int) -> float:
    """η·sqrt(W / (t + W)) for t counted after warmup, i.e. η·sqrt(W / max(t, W)) in absolute t.

    The Transformer's "Noam" decay; it takes the warmup length as its time scale.
    """
    return peak_lr * math.sqrt(warmup_steps / (t + warmup_steps))


@register("lr_range_test")
def lr_range_test(
    t: int, *, peak_lr: float, total_steps: int, min_lr: float = 1e-6, max_lr: float = 1.0, num_steps: int = 200
) -> float:
    """Exponential sweep min_lr·(max_lr/min_lr)^(t/(num_steps−1)) (seed 003); ignores η."""
    return min_lr * (max_lr / min_lr) ** (t / (num_steps - 1))


@register("plateau")
def plateau(
    t: int,
    *,
    peak_lr: float,
    total_steps: int,
    monitor: str = "val/loss",
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 5,
    threshold: float = 1e-4,
    cooldown: int = 0,
    min_lr: float = 0.0,
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


def schedule_parameters(name: str) -> dict[str, Any]:
    """The parameters (and defaults) the schedule ``name`` accepts beyond the common keys."""
    fn = _REGISTRY[name]
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("peak_lr", "total_steps")
    }


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
    mode: str = "min"
    factor: float = 0.1
    patience: int = 5
    threshold: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0
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

    def position(self, update: int) -> int:
        """The schedule index t of optimizer update ``update`` (0-based), in ``interval`` units."""
        return update if self.interval == "step" else update // self.updates_per_epoch

    def lr(self, update: int) -> float:
        """LR for the reference group (base LR = η) at optimizer update ``update``, times
        :attr:`lr_scale`."""
        value = self.lr_fn(self.position(update))
        if self.plateau is not None:
            value *= self.plateau.lr / self.peak_lr
        return value * self.lr_scale

    def momentum(self, update: int) -> float | None:
        """Momentum / beta1 at update ``update``, or None when the schedule leaves it alone."""
        return None if self.momentum_fn is None else self.momentum_fn(self.position(update))


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
    ``warmup_steps`` defaults to ``cfg.warmup_steps``. Raises :class:`ConfigError` for unknown
    names or parameters.
    """
    name = cfg["name"]
    if name not in _REGISTRY:
        raise ConfigError("schedule", f"unknown schedule {name!r}; known: {', '.join(schedule_names())}")
    accepted = schedule_parameters(name)
    params = {k: v for k, v in cfg.items() if k not in COMMON_KEYS}
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"schedule.{unknown[0]}",
            f"not a parameter of schedule {name!r}; it takes {', '.join(sorted(accepted)) or 'none'}",
        )
    if warmup_steps is None:
        warmup_steps = int(cfg.get("warmup_steps") or 0)
    if name == "inverse_sqrt":
        params["warmup_steps"] = warmup_steps
    if "milestones" in params:
        params["milestones"] = tuple(params["milestones"])
    plateau_state = None
    monitor = None
    if name == "plateau":
        plateau_params = {**accepted, **params}
        monitor = plateau_params.pop("monitor")
        plateau_state = ReduceOnPlateau(peak_lr=peak_lr, **plateau_params)
    decay = _decay_fn(_REGISTRY[name], peak_lr, params)
    bound = functools.partial(warmup_then, warmup_steps=warmup_steps, total_steps=total_steps)
    lr_fn = functools.partial(
        bound, decay=decay, warmup_from_zero=bool(cfg.get("warmup_from_zero", True)),
        start_lr=float(cfg.get("warmup_start_lr") or 0.0),
    )
    momentum_fn = None
    if name in _MOMENTUM and params.get("cycle_momentum", True):
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
