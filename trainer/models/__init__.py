"""Models: ``model._target_`` names a callable returning an ``nn.Module`` (see ``trainer.components``).

The built-in families are ``conf/model/*.yaml`` files naming their builders here
(``trainer.models.cnn.build_cnn``, ...); a user's model is just another such file or
``model._target_`` override. ``model.name`` labels the run and is not passed to the target.
A builder that declares its keys (:func:`trainer.params.declare`) has them checked by
:func:`check_model`; any other target's signature decides what it takes. ``model.lora`` (LoRA
adapters, :mod:`trainer.models.lora`) wraps any model: a builder that declares it (``model=hf``)
wraps its own, any other model is wrapped once built.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.components import build, locate, names_parameter, target_of
from trainer.errors import ConfigError
from trainer.models.lora import LORA, with_lora
from trainer.params import check_params, declared

#: Models that read token sequences (B, T) and predict the next token at every position.
SEQUENCE_MODELS = ("gpt",)
#: Shipped models that classify fixed-size inputs (features, images): they cannot read token sequences.
FIXED_INPUT_MODELS = ("mlp", "cnn", "resnet18", "resnet20")
#: Models that take batches of named tensors (``model(**batch)``: :mod:`trainer.data.named`).
NAMED_MODELS = ("hf",)


def check_model(cfg: DictConfig) -> None:
    """ConfigError unless the target can be imported and, when it declares its parameters, every
    key but ``name`` and ``_target_`` is one of them with a value its declaration allows."""
    target = target_of(cfg, "model")
    params = declared(locate(target, "model"))
    if "lora" not in params and cfg.get("lora") is not None:  # the adapters any model takes
        LORA.check(cfg.lora, "model.lora")
    if params:
        values = {k: v for k, v in cfg.items() if k not in ("name", "_target_") and (k != "lora" or k in params)}
        check_params(params, values, "model", owner=f"model {cfg.get('name') or target!r}")


def build_model(cfg: DictConfig, *, input_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """Build ``cfg`` for inputs of one example's ``input_shape`` and ``num_classes`` outputs, each
    passed when the target's signature names it (``num_classes`` None: the data does not say, which
    only a builder that takes it minds). ``cfg`` is checked (:func:`check_model`)."""
    target = target_of(cfg, "model")
    builder = locate(target, "model")
    if num_classes is None and "num_classes" not in cfg and names_parameter(builder, "num_classes", required=True):
        raise ConfigError("data.num_classes", f"{target} takes num_classes and the training data has no classes "
                                              "attribute to count them: set data.num_classes")
    cfg = OmegaConf.merge(cfg, {"_target_": target})
    own_lora = "lora" in declared(builder)  # model=hf wraps its own model (peft's task type)
    model = build(cfg, "model", runtime={"input_shape": tuple(input_shape), "num_classes": num_classes},
                  ours=("name",) if own_lora else ("name", "lora"))
    adapters = not own_lora and cfg.get("lora") is not None
    if not isinstance(model, nn.Module):
        raise ConfigError("model._target_", f"{cfg._target_} returned a {type(model).__name__}, not a torch.nn.Module")
    return with_lora(model, OmegaConf.to_container(cfg.lora)) if adapters else model
