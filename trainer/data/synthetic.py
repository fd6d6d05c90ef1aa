"""A learnable classification task generated from the seed: Gaussian inputs, a random linear teacher."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from trainer.errors import ConfigError

_MINIMUM = {"train_size": 1, "val_size": 1, "num_classes": 2, "num_features": 1}


def check_synthetic(cfg: DictConfig) -> None:
    """ConfigError unless the sizes are whole numbers at their minimum or above and noise >= 0."""
    for key, minimum in _MINIMUM.items():
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"data.{key}", f"got {value!r}; expected a whole number >= {minimum}")
    noise = cfg.noise
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ConfigError("data.noise", f"got {noise!r}; expected a number >= 0 (0 = noiseless labels)")


def load_synthetic(cfg: DictConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, val_x, val_y): x ~ N(0, I) with ``num_features`` dims, y = argmax(x W + noise).

    W is a (num_features, num_classes) Gaussian "teacher" and the noise is Gaussian with std
    ``cfg.noise`` in logit units, so a linear model can learn the labels up to that noise.
    x is float32, y int64. Everything comes from one generator seeded with ``seed`` (teacher,
    then train, then val), so the data depends on ``seed`` alone and never on the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(cfg.num_features, cfg.num_classes, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, cfg.num_features, generator=generator)
        logits = x @ teacher + cfg.noise * torch.randn(n, cfg.num_classes, generator=generator)
        return x, logits.argmax(dim=1)

    return (*split(cfg.train_size), *split(cfg.val_size))
