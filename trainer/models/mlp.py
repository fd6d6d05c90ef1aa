"""A multi-layer perceptron over flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from trainer.models.common import DROPOUT
from trainer.params import Param, declare


@declare(
    hidden_sizes=Param((128,), "widths of the hidden layers", list, item=int, low=1),
    dropout=DROPOUT,
)
def build_mlp(
    *, input_shape: tuple[int, ...], num_classes: int, hidden_sizes: Sequence[int], dropout: float
) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden size -> Linear to ``num_classes`` logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
