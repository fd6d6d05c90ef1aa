"""``trainer.ema_decay``: an exponential moving average of the weights, validated in their place.

After every applied optimizer update u, ``ema = decay · ema + (1 - decay) · weights`` (as
``torch.lerp``), starting from the weights the run starts with; a skipped update leaves it as it
was. Every floating-point parameter and buffer is averaged (BatchNorm's running statistics too,
as timm's ``ModelEmaV3`` does); integer buffers are the model's own. Validation reports the
average's metrics as ``val/*`` and the model's own as ``val_raw/*``.

With a schedule-free optimizer the weights averaged are its x (the point it evaluates), computed
from y and z after each update without moving the parameters, and ``val_raw/*`` is x's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from omegaconf import DictConfig
from torch import nn

from trainer.controls import Control, Parts, Update
from trainer.errors import require
from trainer.optim.schedule_free import eval_point, is_schedule_free
from trainer.params import Param

KEYS = {
    "ema_decay": Param(None, "weight EMA decay per optimizer update, e.g. 0.999; null = off", float, low=0, high=1,
                       low_open=True, high_open=True, extra=(None,)),
}


def check(cfg: DictConfig, strategy: str) -> None:
    require(
        cfg.trainer.ema_decay is None or strategy != "fsdp",
        "trainer.ema_decay",
        "the weight EMA is not supported with trainer.strategy=fsdp (its parameters are shards): use "
        "trainer.strategy=ddp, or trainer.ema_decay=null",
    )


def build(cfg: DictConfig, parts: Parts) -> WeightEMA | None:
    decay = cfg.trainer.ema_decay
    if decay is None:
        return None
    point = (lambda tensors: eval_point(parts.optimizer, tensors)) if is_schedule_free(parts.optimizer) else None
    return WeightEMA(parts.model, decay, point=point)  # from the weights the run starts with


class WeightEMA(Control):
    """The average of ``model``'s floating-point tensors, on their device. ``point``: the weights
    to average, given the model's tensors (schedule-free: its x); None: the tensors themselves."""

    name = "ema"

    def __init__(
        self, model: nn.Module, decay: float, *,
        point: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
    ) -> None:
        self.decay, self.point = decay, point
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
        weights = self.sources if self.point is None else self.point(self.sources)  # by the parameters themselves
        torch._foreach_lerp_(self.averages, [t.detach() for t in weights], weight)

    def after_step(self, update: Update) -> None:
        # After the step, from the weights it wrote; a skipped update leaves the average as it was.
        self.update(update.applied)

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

    def around_validation(self, validate: Callable[[], dict[str, float]]) -> dict[str, float]:
        """``val/*`` of the average, then ``val_raw/*`` of the model's own weights."""
        raw = validate()
        with self.swapped_in():
            averaged = validate()
        return {**averaged, **{f"val_raw/{key.removeprefix('val/')}": value for key, value in raw.items()}}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by the model's state_dict names."""
        return dict(zip(self.names, self.averages))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        """The saved averages; a checkpoint without them (its run had no EMA) starts the average
        from the weights it restored."""
        if state is None:
            torch._foreach_copy_(self.averages, [t.detach() for t in self.sources])
            return
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"the checkpoint's EMA lacks {sorted(missing)[:3]}")
        for name, average in zip(self.names, self.averages):
            average.copy_(state[name])
