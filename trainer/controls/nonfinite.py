"""``trainer.nonfinite``: what a NaN/inf loss or gradient does to the run.

The step never applies an update whose gradients are not finite (the GradScaler, or a host check
on the CPU, skips it), so the parameters stay finite whatever the policy; this control counts the
skipped updates on the device (``train/skipped_updates``) and, when its policy is not ``skip``,
stops the run (``stop``: save, exit 4; ``raise``: a traceback) at the first read that sees a new one.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from trainer.controls import Control, Parts, Read, Stop, Update
from trainer.distributed import World
from trainer.errors import NonFiniteError, NonFiniteStop
from trainer.params import Param

KEYS = {
    "nonfinite": Param("skip", "NaN/inf loss or gradients: skip the update, stop (exit 4) or raise", str,
                       choices=("skip", "stop", "raise")),
}
#: The checkpoint kept when a run stops on a non-finite loss: the last one before it.
LAST_GOOD = "last_good.pt"


def build(cfg: DictConfig, parts: Parts) -> NonFinite:
    return NonFinite(cfg.trainer.nonfinite, device=parts.device, world=parts.world, count_losses=parts.scales_loss)


class NonFinite(Control):
    """Counts skipped updates (and, under fp16's loss scaling, non-finite losses) on the device."""

    name = "nonfinite"
    order = 10  # before the spike guard: a NaN is the graver news when both come at one read

    def __init__(self, policy: str, *, device: torch.device, world: World, count_losses: bool = False) -> None:
        self.policy, self.world, self.count_losses = policy, world, count_losses
        self.acts_on_each_log = policy != "skip"
        self.skipped_updates = torch.zeros((), dtype=torch.long, device=device)
        self.nonfinite_losses = torch.zeros((), dtype=torch.long, device=device)
        self._seen = 0  # the bad events the policy has acted on

    def after_step(self, update: Update) -> None:
        if self.count_losses:  # only fp16 needs the loss apart from the gradients
            self.nonfinite_losses += ~torch.isfinite(update.loss)
        self.skipped_updates += ~update.finite

    def counters(self) -> dict[str, torch.Tensor]:
        return {"train/skipped_updates": self.skipped_updates}

    def _bad(self) -> int:
        """Non-finite events the policy acts on. fp16 overflow skips are routine (the scaler is
        calibrating), so there only a non-finite loss counts."""
        if self.count_losses:  # each rank counts its own losses
            return int(self.world.sum(self.nonfinite_losses))
        return int(self.skipped_updates)  # the global gradient's: the same on every rank

    def on_read(self, read: Read) -> Stop | None:
        if self.policy == "skip":
            return None
        bad = self._bad()
        if bad == self._seen:
            return None
        message = (f"non-finite loss or gradients by update {read.updates_done}; the bad updates were skipped, so "
                   "the parameters are still finite")
        if self.policy == "raise":
            raise NonFiniteError(message)
        self._seen = bad
        last, good = read.run_dir / "last.pt", read.run_dir / LAST_GOOD
        if read.last_checkpoint is None:
            before, keep = "no checkpoint was written before it", None
        else:  # written before the first bad update (every checkpoint reads first): keep it
            before, keep = (f"the last checkpoint before it is {good} (update {read.last_checkpoint}): resume from it "
                            f"with trainer.resume={good}, e.g. with a lower optimizer.lr and "
                            "trainer.resume_schedule=override"), LAST_GOOD
        return Stop(message, error=NonFiniteStop(f"{message}; saved them in {last}; {before}"), keep_last_as=keep)

    def final_metrics(self) -> dict[str, float]:
        return {"skipped_updates": int(self.skipped_updates)}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_updates": int(self.skipped_updates), "nonfinite_losses": int(self.nonfinite_losses)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.skipped_updates.fill_(state["skipped_updates"])
            self.nonfinite_losses.fill_(state["nonfinite_losses"])
        self._seen = self._bad()
