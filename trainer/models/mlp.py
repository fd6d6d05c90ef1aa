"""A multi-layer perceptron over flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


def build_mlp(
    *, input_shape: tuple[int, ...], num_classes: int, hidden_sizes: Sequence[int] = (128,), dropout: float = 0.0
) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden size -> Linear to ``num_classes`` logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
