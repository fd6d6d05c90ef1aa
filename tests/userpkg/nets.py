"""A user's model: the trainer passes ``input_shape`` and ``num_classes`` because they are named."""

from __future__ import annotations

import math

import torch
from torch import nn


class WideNet(nn.Module):
    """Flatten -> Linear(width) -> ReLU -> Dropout -> Linear(num_classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BatchNormNet(nn.Module):
    """Flatten -> Linear(width) -> BatchNorm1d -> ReLU -> Linear(num_classes): running statistics
    that depend on the weights they were gathered at."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
