"""A small conv net for 28x28 images (Fashion-MNIST): fast enough to train on 2 CPU cores."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build_cnn(
    *, input_shape: tuple[int, ...], num_classes: int, channels: Sequence[int] = (16, 32), hidden: int = 128,
    dropout: float = 0.0,
) -> nn.Sequential:
    """[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] per entry of ``channels``, then an MLP head.

    Each stage halves the spatial size, so 28x28 inputs end at 7x7 with two stages.
    """
    in_channels, height, width = input_shape
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
