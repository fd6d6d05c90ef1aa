"""Models: ``model._target_`` names a callable returning an ``nn.Module`` (see ``trainer.components``).

The built-in families are ``conf/model/*.yaml`` files naming their builders here
(``trainer.models.cnn.build_cnn``, ...); a user's model is just another such file or
``model._target_`` override. ``model.name`` labels the run and is not passed to the target.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.components import build, shipped_targets
from trainer.errors import ConfigError

#: Models that read token sequences (B, T) and predict the next token at every position.
SEQUENCE_MODELS = ("gpt",)


def build_model(cfg: DictConfig, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build ``cfg`` for inputs of one example's ``input_shape`` and ``num_classes`` outputs, each
    passed when the target's signature names it.

    A config without ``_target_`` (a run directory's ``config.yaml`` from before targets) is
    built by ``model.name`` from the shipped ``conf/model/NAME.yaml``.
    """
    if cfg.get("_target_") is None:
        known = shipped_targets("model")
        if cfg.get("name") not in known:
            raise ConfigError("model", f"unknown model {cfg.get('name')!r}; known: {', '.join(known)}")
        cfg = OmegaConf.merge(cfg, {"_target_": known[cfg.name]})
    model = build(cfg, "model", runtime={"input_shape": tuple(input_shape), "num_classes": num_classes})
    if not isinstance(model, nn.Module):
        raise ConfigError("model._target_", f"{cfg._target_} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
