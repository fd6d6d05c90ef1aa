"""Models: ``model._target_`` names a callable returning an ``nn.Module`` (see ``trainer.components``).

The built-in families are ``conf/model/*.yaml`` files naming their builders here
(``trainer.models.cnn.build_cnn``, ...); a user's model is just another such file or
``model._target_`` override. ``model.name`` labels the run and is not passed to the target.
A builder that declares its keys (:func:`trainer.params.declare`) has them checked by
:func:`check_model`; any other target's signature decides what it takes.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.components import build, locate, names_parameter, target_of
from trainer.errors import ConfigError
from trainer.params import check_params, declared

#: Models that read token sequences (B, T) and predict the next token at every position.
SEQUENCE_MODELS = ("gpt",)
#: Shipped models that classify fixed-size inputs (features, images): they cannot read token sequences.
FIXED_INPUT_MODELS = ("mlp", "cnn", "resnet18", "resnet20")


def check_model(cfg: DictConfig) -> None:
    """ConfigError unless the target can be imported and, when it declares its parameters, every
    key but ``name`` and ``_target_`` is one of them with a value its declaration allows."""
    target = target_of(cfg, "model")
    params = declared(locate(target, "model"))
    if params:
        values = {k: v for k, v in cfg.items() if k not in ("name", "_target_")}
        check_params(params, values, "model", owner=f"model {cfg.get('name') or target!r}")


def build_model(cfg: DictConfig, *, input_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """Build ``cfg`` for inputs of one example's ``input_shape`` and ``num_classes`` outputs, each
    passed when the target's signature names it (``num_classes`` None: the data does not say, which
    only a builder that takes it minds). ``cfg`` is checked (:func:`check_model`)."""
    target = target_of(cfg, "model")
    if num_classes is None and "num_classes" not in cfg and names_parameter(locate(target, "model"), "num_classes"):
        raise ConfigError("data.num_classes", f"{target} takes num_classes and the training data has no classes "
                                              "attribute to count them: set data.num_classes")
    cfg = OmegaConf.merge(cfg, {"_target_": target})
    model = build(cfg, "model", runtime={"input_shape": tuple(input_shape), "num_classes": num_classes})
    if not isinstance(model, nn.Module):
        raise ConfigError("model._target_", f"{cfg._target_} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
