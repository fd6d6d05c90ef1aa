"""A learnable classification task generated from the seed: Gaussian inputs, a random linear teacher."""

from __future__ import annotations

import torch

from trainer.data.source import DataSpec, ExampleDataset, with_spec
from trainer.params import Param, declare


def _spec(*, train_size: int, num_classes: int, num_features: int, **_: object) -> DataSpec:
    return DataSpec((num_features,), num_classes, train_size)


@with_spec(_spec)
@declare(
    train_size=Param(2048, "training examples", int, low=1),
    val_size=Param(512, "validation examples", int, low=1),
    num_classes=Param(4, "classes of the teacher's labels", int, low=2),
    num_features=Param(16, "dimensions of x", int, low=1),
    noise=Param(0.1, "std of the noise added to the teacher's logits (0 = noiseless labels)", float, low=0),
)
def synthetic(
    *, seed: int, train_size: int, val_size: int, num_classes: int, num_features: int, noise: float
) -> ExampleDataset:
    """``data=synthetic``: x ~ N(0, I) with ``num_features`` dims, y = argmax(x W + noise).

    W is a (num_features, num_classes) Gaussian "teacher" and the noise is Gaussian with std
    ``noise`` in logit units, so a linear model can learn the labels up to that noise. x is
    float32, y int64. Everything comes from one generator seeded with ``seed`` (teacher, then
    train, then val), so the data depends on ``seed`` alone and never on the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(num_features, num_classes, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, num_features, generator=generator)
        logits = x @ teacher + noise * torch.randn(n, num_classes, generator=generator)
        return x, logits.argmax(dim=1)

    return ExampleDataset(
        *split(train_size), *split(val_size), num_classes=num_classes, input_shape=(num_features,)
    )
