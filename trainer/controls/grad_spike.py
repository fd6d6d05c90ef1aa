"""``trainer.grad_spike``: a pre-clip gradient norm far above its recent median is a spike (seed 002:
"if gradient norms spike, trigger early stopping").

The window of recent norms, the spike count and the decision all stay on the device: judging an
update costs no host-device sync; the loop reads the count with the other logged values.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from trainer.controls import Control, Parts, Read, Stop
from trainer.errors import GradSpikeStop
from trainer.params import Param

KEYS = {
    "grad_spike": {
        "factor": Param(None, "a pre-clip grad norm above factor × the median of the last window norms is a spike; "
                        "null = off", float, low=1, low_open=True, extra=(None,)),
        "window": Param(100, "updates whose norms make the running median; no spike before it is full", int, low=1),
        "action": Param("skip", "skip the update, stop (save, exit 4) or only log it", str,
                        choices=("skip", "stop", "log")),
    },
}

#: The running spike count's name in the final metrics (``train/NAME`` in the logs), by action.
SPIKE_COUNTS = {"skip": "spike_skips", "stop": "spike_skips", "log": "grad_spikes"}


def build(cfg: DictConfig, parts: Parts) -> GradSpike | None:
    node = cfg.trainer.grad_spike
    return None if node.factor is None else GradSpike(**node, device=parts.device)


class GradSpike(Control):
    """Judges each update's pre-clip total gradient norm against the median of the finite norms of
    the ``window`` updates before it (``torch.median``: the lower middle value of an even window).

    Until ``window`` finite norms have been seen nothing is a spike: the first updates' norms (a
    warmup's, a fresh model's) move fast, and a median of a few is no baseline. Every finite
    norm enters the window, a spike's too, so a lasting change of scale stops counting as a spike
    once it fills half the window. A non-finite norm is ``trainer.nonfinite``'s business, never a
    spike, and does not enter the window.
    """

    name = "grad_spike"

    def __init__(self, *, factor: float, window: int, action: str, device: torch.device) -> None:
        self.factor, self.window, self.action = factor, window, action
        self.acts_on_each_log = action == "stop"
        self.norms = torch.full((window,), float("nan"), device=device)  # oldest first
        self.filled = torch.zeros((), dtype=torch.long, device=device)
        self.spikes = torch.zeros((), dtype=torch.long, device=device)
        self._seen = 0  # the spikes the stop and log actions have acted on

    @property
    def vetoes(self) -> bool:
        """Whether a spike's update is skipped (``skip`` and ``stop``; ``log`` applies it)."""
        return self.action != "log"

    @property
    def tag(self) -> str:
        return f"train/{SPIKE_COUNTS[self.action]}"

    def observe(self, grad_norm: torch.Tensor) -> torch.Tensor:
        """Judge one update's pre-clip norm (a device scalar), then add it to the window; returns
        whether it is a spike (a device bool)."""
        finite = torch.isfinite(grad_norm)
        full = self.filled >= self.window
        spike = finite & full & (grad_norm > self.factor * torch.median(self.norms))
        self.spikes += spike
        shifted = torch.cat([self.norms[1:], grad_norm.detach().float().reshape(1)])
        self.norms.copy_(torch.where(finite, shifted, self.norms))
        self.filled.add_(finite).clamp_(max=self.window)
        return spike

    def veto(self, grad_norm: torch.Tensor) -> torch.Tensor | None:
        # Judged on the pre-clip norm against earlier updates' norms (the window excludes this one).
        spike = self.observe(grad_norm)
        return spike if self.vetoes else None

    def counters(self) -> dict[str, torch.Tensor]:
        return {self.tag: self.spikes}

    def on_read(self, read: Read) -> Stop | None:
        """``log``: a line for new spikes; ``stop``: save and stop."""
        if self.action == "skip":
            return None
        count = int(self.spikes)
        new, self._seen = count - self._seen, count
        if new == 0:
            return None
        what = (f"{new} gradient-norm spike(s) by update {read.updates_done} (pre-clip norm above {self.factor:g} × the "
                f"median of the last {self.window} updates' norms)")
        if self.action == "log":
            read.write(f"grad_spike: {what}; applied")
            return None
        return Stop(what, error=GradSpikeStop(f"{what}; they were skipped, and the parameters saved in "
                                              f"{read.run_dir / 'last.pt'}"))

    def final_metrics(self) -> dict[str, float]:
        return {SPIKE_COUNTS[self.action]: int(self.spikes)}

    def state_dict(self) -> dict[str, Any]:
        return {"norms": self.norms.cpu(), "filled": int(self.filled), "spikes": int(self.spikes)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Resume the window and the count. A run resumed with another ``window`` keeps the newest
        saved norms that fit (the finite ones are the last ``filled`` of an oldest-first window),
        and fills up from them when they are fewer than it holds. Without a saved state (a run
        that had no spike guard) the window starts empty."""
        if state is not None:
            kept = min(int(state["filled"]), self.window)
            self.norms.fill_(float("nan"))
            if kept:
                self.norms[-kept:] = state["norms"][-kept:].to(self.norms.device)
            self.filled.fill_(kept)
            self.spikes.fill_(state["spikes"])
        self._seen = int(self.spikes)
