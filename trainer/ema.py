"""``trainer.ema_decay``: an exponential moving average of the weights, validated in their place.

After every applied optimizer update u, ``ema = decay · ema + (1 - decay) · weights`` (as
``torch.lerp``), starting from the weights the run starts with; a skipped update leaves it as it
was. Every floating-point parameter and buffer is averaged (BatchNorm's running statistics too,
as timm's ``ModelEmaV3`` does); integer buffers are the model's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from trainer.params import Param

EMA_DECAY = Param(None, "weight EMA decay per optimizer update, e.g. 0.999; null = off", float, low=0, high=1,
                  low_open=True, high_open=True, extra=(None,))


class WeightEMA:
    """The average of ``model``'s floating-point tensors, on their device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        named = [*model.named_parameters(), *model.named_buffers()]
        self.names = [name for name, tensor in named if tensor.is_floating_point()]
        self.sources = [tensor for _, tensor in named if tensor.is_floating_point()]
        self.averages = [tensor.detach().clone() for tensor in self.sources]

    @torch.no_grad()
    def update(self, applied: bool | torch.Tensor) -> None:
        """Average in the weights after an update; ``applied`` (a host or device bool) False: the
        update was skipped, and the average stays as it was."""
        if applied is False:
            return
        weight = 1.0 - self.decay if applied is True else applied * (1.0 - self.decay)
        torch._foreach_lerp_(self.averages, [t.detach() for t in self.sources], weight)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averages inside the block and its own weights again after it."""
        own = [t.detach().clone() for t in self.sources]
        torch._foreach_copy_(self.sources, self.averages)
        try:
            yield
        finally:
            torch._foreach_copy_(self.sources, own)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by the model's state_dict names."""
        return dict(zip(self.names, self.averages))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"the checkpoint's EMA lacks {sorted(missing)[:3]}")
        for name, average in zip(self.names, self.averages):
            average.copy_(state[name])
