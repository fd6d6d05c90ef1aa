"""What the model builders share: the dropout declaration and the check that inputs are images."""

from __future__ import annotations

from trainer.errors import ConfigError
from trainer.params import Param

DROPOUT = Param(0.0, "probability of zeroing an activation in training", float, low=0, high=1, high_open=True)


def require_images(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``input_shape`` as (channels, height, width), or a ConfigError naming ``model``."""
    if len(input_shape) != 3:
        raise ConfigError(
            "model",
            f"model={model} takes images (channels, height, width); this data's examples have shape "
            f"{tuple(input_shape)}: use model=mlp, or image data (data=fashion_mnist or data=cifar10)",
        )
    return tuple(input_shape)  # type: ignore[return-value]
