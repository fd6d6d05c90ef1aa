"""A learnable classification task generated from the seed: Gaussian inputs, a random linear teacher."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from trainer.params import Param

#: ``data=synthetic``'s own keys (conf/data/synthetic.yaml).
PARAMS = {
    "train_size": Param(2048, "training examples", int, low=1),
    "val_size": Param(512, "validation examples", int, low=1),
    "batch_size": Param(64, "examples per micro-batch", int, low=1),
    "num_classes": Param(4, "classes of the teacher's labels", int, low=2),
    "num_features": Param(16, "dimensions of x", int, low=1),
    "noise": Param(0.1, "std of the noise added to the teacher's logits (0 = noiseless labels)", float, low=0),
}


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
