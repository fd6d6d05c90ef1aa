"""``trainer.grad_spike``: a pre-clip gradient norm far above its recent median is a spike (seed 002:
"if gradient norms spike, trigger early stopping").

The window of recent norms, the spike count and the decision all stay on the device: judging an
update costs no host-device sync; the loop reads the count with the other logged values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from trainer.params import Param

#: ``trainer.grad_spike.*``: read by :class:`GradSpike`.
GRAD_SPIKE: dict[str, Param] = {
    "factor": Param(None, "a pre-clip grad norm above factor × the median of the last window norms is a spike; "
                    "null = off", float, low=1, low_open=True, extra=(None,)),
    "window": Param(100, "updates whose norms make the running median; no spike before it is full", int, low=1),
    "action": Param("skip", "skip the update, stop (save, exit 4) or only log it", str,
                    choices=("skip", "stop", "log")),
}

#: The TensorBoard tag of the running spike count, by action.
SPIKE_TAGS = {"skip": "train/spike_skips", "stop": "train/spike_skips", "log": "train/grad_spikes"}


class GradSpike:
    """Judges each update's pre-clip total gradient norm against the median of the finite norms of
    the ``window`` updates before it (``torch.median``: the lower middle value of an even window).

    Until ``window`` finite norms have been seen nothing is a spike: the first updates' norms (a
    warmup's, a fresh model's) move fast, and a median of a few is no baseline. Every finite
    norm enters the window, a spike's too, so a lasting change of scale stops counting as a spike
    once it fills half the window. A non-finite norm is ``trainer.nonfinite``'s business, never a
    spike, and does not enter the window.
    """

    def __init__(self, *, factor: float, window: int, action: str, device: torch.device) -> None:
        self.factor, self.window, self.action = factor, window, action
        self.norms = torch.full((window,), float("nan"), device=device)  # oldest first
        self.filled = torch.zeros((), dtype=torch.long, device=device)
        self.spikes = torch.zeros((), dtype=torch.long, device=device)

    @property
    def vetoes(self) -> bool:
        """Whether a spike's update is skipped (``skip`` and ``stop``; ``log`` applies it)."""
        return self.action != "log"

    @property
    def tag(self) -> str:
        return SPIKE_TAGS[self.action]

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

    def state_dict(self) -> dict:
        return {"norms": self.norms.cpu(), "filled": int(self.filled), "spikes": int(self.spikes)}

    def load_state_dict(self, state: dict) -> None:
        """Resume the window and the count. A run resumed with another ``window`` keeps the newest
        saved norms that fit (the finite ones are the last ``filled`` of an oldest-first window),
        and fills up from them when they are fewer than it holds."""
        kept = min(int(state["filled"]), self.window)
        self.norms.fill_(float("nan"))
        if kept:
            self.norms[-kept:] = state["norms"][-kept:].to(self.norms.device)
        self.filled.fill_(kept)
        self.spikes.fill_(state["spikes"])


@contextlib.contextmanager
def vetoing(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, veto: torch.Tensor | None) -> Iterator[None]:
    """Make ``scaler.step(optimizer)`` skip the step when ``veto`` (a device bool) is set, on the
    device, as it skips non-finite gradients: the veto is added to the inf flags that
    ``scaler.unscale_`` recorded (what the fused optimizers read), and taken out again before
    ``scaler.update``, so fp16's loss scale does not back off for a spike.
    """
    if veto is None:
        yield
        return
    # GradScaler keeps these per optimizer, per device; there is no public way to add a flag.
    flags = list(scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values())
    vetoes = [veto.to(flag.device, flag.dtype) for flag in flags]
    torch._foreach_add_(flags, vetoes)
    try:
        yield
    finally:
        torch._foreach_sub_(flags, vetoes)
