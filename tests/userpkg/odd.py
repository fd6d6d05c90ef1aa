"""What a hostile user brings: components that are each fine alone and cannot work together with
some settings (``tests/test_combinations.py``)."""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset


def regression(size: int, seed: int = 0) -> TensorDataset:
    """``size`` examples of 4 features whose target is their sum: float targets, a regression."""
    features = torch.randn(size, 4, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(features, features.sum(1, keepdim=True))


class Linear(nn.Module):
    """4 features -> 1 output."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Detached(nn.Module):
    """Scores whose graph is cut: the loss reaches no parameter."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_shape[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).detach()


def exiting(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A builder that gives up the way scripts do."""
    sys.exit("no weights here")
