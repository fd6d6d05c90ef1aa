"""ResNets for small images: torchvision's ResNet-18 with a CIFAR stem, and He et al.'s ResNet-20."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainer.models.common import require_images
from trainer.params import Param, declare


def build_resnet18(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 for 28-32 px inputs: a 3x3 stride-1 stem and no max-pool, so the
    first stage still sees the full image (the ImageNet stem would shrink 32 px to 8 px at once);
    input channels come from the data (1 for Fashion-MNIST, 3 for CIFAR-10)."""
    import torchvision  # only here: it (and the torch._dynamo it imports) takes seconds to import

    channels = require_images("resnet18", input_shape)[0]
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    # Depths for optimizer.layer_decay (trainer.optim.layer_decay): stem, the four stages, the head.
    model.layer_order = (("conv1", "bn1"), "layer1", "layer2", "layer3", "layer4", "fc")
    return model


class _BasicBlock(nn.Module):
    """Two 3x3 convs with BN; the shortcut subsamples and zero-pads channels (He et al.'s option A,
    parameter-free, as in their CIFAR experiments)."""

    #: A repeated residual block: FSDP2 shards it on its own (trainer.distributed.blocks_to_shard).
    is_block = True

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.extra_channels = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra_channels:
            half = self.extra_channels // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.extra_channels - half))
        return F.relu(out + shortcut)


@declare(blocks_per_stage=Param(3, "n in 6n+2 layers: 3 -> ResNet-20, 5 -> 32, 9 -> 56", int, low=1))
def build_resnet20(*, input_shape: tuple[int, ...], num_classes: int, blocks_per_stage: int) -> nn.Module:
    """He et al. (2016) CIFAR ResNet: 3 stages of ``blocks_per_stage`` blocks at 16/32/64 channels
    (6n+2 layers: n=3 is ResNet-20, 0.27M parameters), global average pool, linear classifier."""
    layers: list[nn.Module] = [
        nn.Conv2d(require_images("resnet20", input_shape)[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
    ]
    in_channels = 16
    # Depths for optimizer.layer_decay (trainer.optim.layer_decay): the stem's conv and BN, each stage's
    # blocks, the head (nn.Sequential names its modules by position).
    layer_order: list[tuple[str, ...]] = [("0", "1")]
    for stage, channels in enumerate((16, 32, 64)):
        layer_order.append(tuple(str(len(layers) + block) for block in range(blocks_per_stage)))
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(_BasicBlock(in_channels, channels, stride))
            in_channels = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    layer_order.append((str(len(layers) - 1),))
    model = nn.Sequential(*layers)
    model.layer_order = tuple(layer_order)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
    return model
