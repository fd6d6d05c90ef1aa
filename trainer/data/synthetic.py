"""A learnable classification task generated from the seed: Gaussian inputs, a random linear teacher."""

from __future__ import annotations

import torch
from omegaconf import DictConfig


def load_synthetic(cfg: DictConfig, seed: int) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, val_x, val_y): x ~ N(0, I) with ``num_features`` dims, y = argmax(W x + noise).

    Uses its own generator, so the data depends on ``seed`` alone and never on the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(cfg.num_features, cfg.num_classes, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, cfg.num_features, generator=generator)
        logits = x @ teacher + cfg.noise * torch.randn(n, cfg.num_classes, generator=generator)
        return x, logits.argmax(dim=1)

    return (*split(cfg.train_size), *split(cfg.val_size))
