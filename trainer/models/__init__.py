"""Model registry: ``model.name`` -> builder taking the model config and the data's shape."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn

from trainer.errors import ConfigError
from trainer.models.cnn import build_cnn
from trainer.models.gpt import build_gpt
from trainer.models.mlp import build_mlp
from trainer.models.resnet import build_resnet18, build_resnet20

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp, "cnn": build_cnn, "resnet18": build_resnet18, "resnet20": build_resnet20,
    "gpt": build_gpt,
}
#: Models that read token sequences (B, T) and predict the next token at every position.
SEQUENCE_MODELS = ("gpt",)


def build_model(cfg: DictConfig, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate ``cfg.name`` for inputs of one example's ``input_shape`` and ``num_classes`` outputs."""
    if cfg.name not in MODELS:
        raise ConfigError("model", f"unknown model {cfg.name!r}; known: {', '.join(sorted(MODELS))}")
    params = {k: v for k, v in cfg.items() if k != "name"}
    return MODELS[cfg.name](input_shape=input_shape, num_classes=num_classes, **params)
