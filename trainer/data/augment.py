"""Augmentation on whole batches, on the batch's own device (no DataLoader workers needed)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def crop_and_flip(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Random ``padding``-pixel-shift crop and horizontal flip of each image in ``x`` (N, C, H, W).

    The standard CIFAR augmentation (RandomCrop(size, padding) + RandomHorizontalFlip), done for
    the whole batch with one gather. Padding is 0 in normalized units, i.e. the dataset's mean
    colour. ``generator`` (on ``x``'s device) decides every shift and flip.
    """
    n, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    rows = (dy + torch.arange(height, device=x.device)).view(n, 1, height, 1)
    cols = dx + torch.arange(width, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols).view(n, 1, 1, width)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]
