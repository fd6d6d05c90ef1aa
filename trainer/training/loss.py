"""The training loss: ``loss=cross_entropy`` (the default) or any callable named by ``loss._target_``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

#: ``loss``: (outputs, targets) -> a scalar tensor to minimise.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CrossEntropy:
    """``loss=cross_entropy`` (the default): mean cross-entropy (nats) over every target: (N, C)
    logits with (N,) classes, or a language model's (B, T, V) logits with (B, T) next tokens (per
    predicted token). ``label_smoothing`` comes from ``trainer.label_smoothing``."""

    label_smoothing: float = 0.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), label_smoothing=self.label_smoothing)
