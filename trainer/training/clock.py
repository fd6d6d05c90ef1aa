"""The training clock: seconds of training, the count of a schedule in time
(``schedule.interval=time``) and of the run's budget (``trainer.max_time``).

It runs from the loop's first update, and stands still while the run validates (BatchNorm
re-estimation included) and writes checkpoints, so t is time spent training: data, forward,
backward, step and the logger's reads. The LR of update u is set from a reading taken right after
update u - 1 stepped (u = 0 and a resumed run's first update: the checkpoint's), the *stamp* of u;
under several processes every rank takes rank 0's reading (one host-side broadcast per update,
made only when time is used), so all apply the same LR and stop at the same update. On CUDA the
reading waits for the device (one sync per update, again only when time is used), so t is the
device's time, not how far the host has queued ahead.

The checkpoint keeps the seconds counted and the stamp of its update (the step's state): a resumed
run continues the same clock, and the time between that checkpoint and a kill is not counted, as
its updates are trained again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig

from trainer.distributed import World
from trainer.errors import require
from trainer.training.counts import RunningCount, check_measured_schedule

#: Where every training clock reads the time (seconds from any origin). Tests put a fake clock here.
SOURCE: Callable[[], float] = time.perf_counter


def uses_clock(cfg: DictConfig) -> bool:
    """Whether the run needs a clock: a schedule in seconds, or a budget in seconds."""
    return cfg.schedule.interval == "time" or cfg.trainer.get("max_time") is not None


def check_time(cfg: DictConfig) -> None:
    """What a schedule or budget in seconds cannot do with the rest of the config."""
    trainer, schedule = cfg.trainer, cfg.schedule
    caps = [key for key in ("max_steps", "max_samples", "max_tokens") if trainer.get(key) is not None]
    if schedule.interval == "time":
        check_measured_schedule(cfg, budget="max_time", counts="seconds of training",
                                other_units="steps, samples or tokens")
    elif trainer.get("max_time") is not None:
        require(caps, "trainer.max_time",
                f"with schedule.interval={schedule.interval} the LR of every update is fixed before the run, which a "
                "budget in seconds cannot do: count the schedule in seconds (schedule.interval=time), or also set "
                "trainer.max_steps (the run ends at whichever comes first)")


class TrainingClock(RunningCount):
    """Seconds of training, agreed over ``world``'s ranks; ``max_time``: the budget (seconds);
    ``counts_schedule``: the schedule's t is read from it (``interval=time``), not only a budget.

    :meth:`stamp` reads it for an update; :meth:`~RunningCount.at` gives that reading back (the
    schedule's t, also logged as ``train/t``); :meth:`paused` stops it for a block;
    :meth:`~RunningCount.spent` says when the budget is.
    """

    key, unit, what, number = "trainer.max_time", " s", "training clock", ".3f"

    def __init__(self, world: World | None = None, *, max_time: int | None = None,
                 device: torch.device | None = None, counts_schedule: bool = True) -> None:
        super().__init__(budget=max_time, counts_schedule=counts_schedule)
        self.world = world or World()
        self.device = device if device is not None and device.type == "cuda" else None
        self.read = SOURCE  # looked up now: a test's fake clock is in place by the time a run is built
        self.seconds = 0.0  # counted before ``since``
        self.since: float | None = None  # the reading it runs from; None while stopped
        self.pauses = 0  # nested pauses (a checkpoint inside a validation's block)
        self.stamps = {0: 0.0}

    def start(self) -> None:
        """Run from now (the loop's first update)."""
        self.since = self.read()

    def elapsed(self) -> float:
        """Seconds counted so far (this rank's own reading)."""
        running = self.read() - self.since if self.since is not None and not self.pauses else 0.0
        return self.seconds + running

    def stamp(self, update: int) -> float:
        """Read the clock for update ``update`` (about to run): rank 0's reading on every rank."""
        if self.device is not None:
            torch.cuda.synchronize(self.device)
        return self._keep(update, float(self.world.broadcast(self.elapsed())))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stand still in the block (validation, a checkpoint write); blocks may nest."""
        if self.pauses == 0 and self.since is not None:
            self.seconds += self.read() - self.since
        self.pauses += 1
        try:
            yield
        finally:
            self.pauses -= 1
            if self.pauses == 0 and self.since is not None:
                self.since = self.read()

    def state_dict(self) -> dict[str, Any]:
        """The seconds counted and the newest stamp (the checkpoint's update and the t it trains at)."""
        return {"seconds": self.elapsed(), **super().state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        super().load_state_dict(state)
        if state is not None:
            self.seconds, self.stamps = float(state["seconds"]), {int(state["update"]): float(state["t"])}


def paused(clock: TrainingClock | None) -> contextlib.AbstractContextManager:
    """``clock.paused()``, or nothing to pause in a run without a clock."""
    return clock.paused() if clock is not None else contextlib.nullcontext()
