"""A watched validation metric: which one, which way is better, and whether a value beats the best.

Early stopping, the plateau schedule, ``best.pt`` and the end-of-run summary all ask whether a
validation beat the best one so far; they differ only in the margin that counts.
"""

from __future__ import annotations

import math

from trainer.errors import ConfigError
from trainer.params import Param

#: ``monitor`` and ``mode`` of whatever watches a validation metric (``trainer.early_stopping``, ``schedule=plateau``).
MONITOR = Param("val/loss", "the validation metric watched", str, choices=("val/loss", "val/acc"))
MODE = Param("min", "min: lower is better; max: higher is better", str, choices=("min", "max"))


def mode_of(tag: str) -> str:
    """``min`` for a loss (``val/loss``, ``val_raw/loss``), ``max`` for the others (accuracies): the
    direction of every metric the trainer logs."""
    return "min" if tag.endswith("loss") else "max"


def check_mode(monitor: str, mode: str, prefix: str) -> None:
    """Refuse a ``mode`` against ``monitor``'s direction: ``val/acc`` with ``min`` would count every
    gain in accuracy as a setback."""
    if mode != mode_of(monitor):
        better = "lower" if mode_of(monitor) == "min" else "higher"
        raise ConfigError(f"{prefix}.mode", f"{monitor} is better {better}, so mode={mode} would take every "
                                            f"improvement for a setback: set {prefix}.mode={mode_of(monitor)}")


def beats(value: float, best: float, mode: str, *, margin: float = 0.0, relative: bool = False) -> bool:
    """Whether ``value`` is better than ``best`` by more than ``margin``: in the metric's units, or
    with ``relative`` a fraction of ``best`` (``ReduceLROnPlateau``'s ``threshold_mode='rel'``, as
    torch compares). In metric units an infinite or NaN value never beats anything; ``best`` starts
    at :func:`worst`."""
    if relative:
        return value < best * (1.0 - margin) if mode == "min" else value > best * (1.0 + margin)
    sign = 1.0 if mode == "min" else -1.0
    return math.isfinite(value) and sign * (best - value) > margin


def worst(mode: str) -> float:
    """The starting best value: anything finite beats it."""
    return math.inf if mode == "min" else -math.inf
