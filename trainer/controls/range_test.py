"""The LR range test: smoothed loss against LR, an early stop on divergence, a suggestion.

``schedule=lr_range_test`` sweeps the LR exponentially (seed 003); this control records the loss
of every update (it logs and reads each one), stops the run when the loss has diverged, and at the
end writes ``lr_find.json`` and draws ``lr_find.png`` with the LR it suggests. The suggestion is the LR where the smoothed loss falls fastest per unit of
log(LR) ("steepest descent", fast.ai's ``steep``), searched before the loss minimum; the LR at
the minimum divided by 10 is reported beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.controls import Control, Parts, Read, Stop
from trainer.files import figure_bytes, write_atomic

KEYS: dict[str, Any] = {}  # its keys are schedule=lr_range_test's
SMOOTHING = 0.9  # EMA factor; fast.ai's 0.98 lags ~50 updates, too many for a 100-update sweep
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its best


def smoothed(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction, so early values are not pulled to 0."""
    out, average = [], 0.0
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def build(cfg: DictConfig, parts: Parts) -> RangeTestMonitor | None:
    return RangeTestMonitor() if cfg.schedule.name == "lr_range_test" else None


@dataclass
class RangeTestMonitor(Control):
    """Collects (LR, loss) per update and says when the loss has diverged."""

    name = "range_test"
    logs_every_update = True

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stopped_early_at: int | None = None

    def record(self, lr: float, loss: float) -> bool:
        """Add one update; True when the run should stop (loss non-finite or > 4x the best)."""
        self.lrs.append(lr)
        self.losses.append(loss)
        smooth = smoothed(self.losses)
        diverged = not math.isfinite(loss) or smooth[-1] > DIVERGENCE * min(smooth)
        if diverged:
            self.stopped_early_at = len(self.losses)
        return diverged

    def on_read(self, read: Read) -> Stop | None:
        for record in read.records:  # every update's, as it logs every update
            if self.record(record["train/lr"], record["train/loss"]):
                return Stop(f"range test: loss diverged at update {read.updates_done}; stopping")
        return None

    def ended(self) -> Stop | None:
        return None if self.stopped_early_at is None else Stop("range test: the loss diverged before the checkpoint")

    def finish(self, run_dir: Path, metrics: dict[str, float], write: Callable[[str], None]) -> None:
        found = write_lr_find(run_dir, self)
        if found["suggested_lr"] is None:
            write(f"range test: {found['rule']}")
            return
        metrics["suggested_lr"] = found["suggested_lr"]
        write(f"range test: suggested optimizer.lr={found['suggested_lr']:.3g} ({found['rule']}); "
              f"see {run_dir / 'lr_find.png'}")

    def state_dict(self) -> dict:
        """The losses so far: the divergence check and the suggestion use all of them."""
        return asdict(self)

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:
            self.lrs, self.losses, self.stopped_early_at = state["lrs"], state["losses"], state["stopped_early_at"]


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float | str] | None:
    """The suggested peak LR and the rule that chose it; None with fewer than 3 finite losses
    (a slope needs a point on each side)."""
    points = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss) and lr > 0]
    if len(points) < 3:
        return None
    lr_values = [lr for lr, _ in points]
    smooth = smoothed([loss for _, loss in points])
    lowest = min(range(len(smooth)), key=smooth.__getitem__)
    end = max(lowest, 2)
    slopes = [
        (smooth[i + 1] - smooth[i - 1]) / (math.log(lr_values[i + 1]) - math.log(lr_values[i - 1]))
        for i in range(1, end)
    ]
    steepest = 1 + min(range(len(slopes)), key=slopes.__getitem__)
    return {
        "suggested_lr": lr_values[steepest],
        "rule": "steepest descent of the smoothed loss per unit log(LR), before its minimum",
        "lr_at_min_loss": lr_values[lowest],
        "lr_at_min_loss_div_10": lr_values[lowest] / 10,
    }


def write_lr_find(run_dir: Path, monitor: RangeTestMonitor) -> dict[str, float | str | None]:
    """Write lr_find.json (and lr_find.png when there is a suggestion) into ``run_dir``; returns
    the suggestion, whose ``suggested_lr`` is None when the loss diverged too early to give one."""
    result: dict[str, float | str | None] | None = suggest(monitor.lrs, monitor.losses)
    if result is None:
        result = {
            "suggested_lr": None,
            "rule": "too few finite losses to suggest an LR: lower schedule.max_lr or raise schedule.num_steps",
        }
    result["stopped_early_at_update"] = monitor.stopped_early_at
    write_atomic(run_dir / "lr_find.json", json.dumps(result, indent=2) + "\n")
    if result["suggested_lr"] is None:
        return result
    from matplotlib.figure import Figure  # only here: every run imports this module, few draw

    finite = [(lr, loss) for lr, loss in zip(monitor.lrs, monitor.losses) if math.isfinite(loss)]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    smooth = smoothed([loss for _, loss in finite])
    ax.plot([lr for lr, _ in finite], [loss for _, loss in finite], color="0.75", label="loss")
    ax.plot([lr for lr, _ in finite], smooth, label="smoothed loss")
    ax.axvline(result["suggested_lr"], color="C3", linestyle="--", label=f"suggested {result['suggested_lr']:.2e}")
    # Every finite loss, the divergence included, on a log axis: a linear one clipped to the
    # start's scale hid the divergence the test stops on.
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (log scale)")
    stopped = monitor.stopped_early_at
    ax.set_title("LR range test" + (f": stopped at update {stopped}, the loss diverged" if stopped else ""))
    ax.legend(loc="best")
    fig.tight_layout()
    write_atomic(run_dir / "lr_find.png", figure_bytes(fig, dpi=110))
    return result
