"""A small conv net for 28x28 images (Fashion-MNIST): fast enough to train on 2 CPU cores."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from trainer.errors import ConfigError
from trainer.models.common import DROPOUT, require_images
from trainer.params import Param, declare


@declare(
    channels=Param((16, 32), "output channels of each conv stage (each halves the image size)", list,
                   item=int, low=1, min_items=1),
    hidden=Param(128, "width of the hidden fully-connected layer", int, low=1),
    dropout=DROPOUT,
)
def build_cnn(
    *, input_shape: tuple[int, ...], num_classes: int, channels: Sequence[int], hidden: int, dropout: float
) -> nn.Sequential:
    """[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] per entry of ``channels``, then an MLP head.

    Each stage halves the spatial size, so 28x28 inputs end at 7x7 with two stages.
    """
    in_channels, height, width = require_images("cnn", input_shape)
    if min(height, width) < 2 ** len(channels):
        raise ConfigError(
            "model.channels",
            f"{len(channels)} stages halve {height}x{width} images {len(channels)} times, to nothing: "
            f"use at most {int(math.log2(min(height, width)))} entries",
        )
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        in_channels, height, width = out_channels, height // 2, width // 2
    layers += [
        nn.Flatten(),
        nn.Linear(in_channels * height * width, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)
