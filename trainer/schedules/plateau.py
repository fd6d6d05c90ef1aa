"""``ReduceLROnPlateau`` as state: the one schedule that depends on validation metrics.

Its state (the reductions so far, the best metric, the patience and cooldown counters) is saved
with checkpoints; every other schedule is a pure function of the update count."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.monitor import beats, worst

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
        self.best = worst(self.mode)

    def observe(self, metric: float) -> None:
        """Take one validation result; may lower :attr:`lr` by ``factor`` (not below min_lr)."""
        if beats(metric, self.best, self.mode, margin=self.threshold, relative=True):
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
