"""``model=hf``: a Hugging Face ``transformers`` model, from a local folder or from a config.

``model.task`` picks the head: ``causal_lm`` (``AutoModelForCausalLM``: next-token logits, labels
shifted inside the model) or ``sequence_classification`` (``AutoModelForSequenceClassification``:
one class per sequence). ``model.path`` loads a folder ``save_pretrained`` wrote
(``from_pretrained(path)``, local files only: weights are never downloaded); ``model.config``
builds a fresh model from ``AutoConfig.for_model(**config)``. ``model.lora`` adds adapters
(:mod:`trainer.models.lora`). Its batches are named tensors (``input_ids``, ``attention_mask``,
``labels``: :mod:`trainer.data.named`).

``transformers`` is imported only when such a model is built (or already was): ``import trainer``
and every other model never pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from trainer.errors import ConfigError, one_line, require
from trainer.models.lora import LORA, with_lora
from trainer.params import REQUIRED, Param, declare

#: model.task -> the Auto class that builds it, and peft's task type for its adapters.
TASKS = {
    "causal_lm": ("AutoModelForCausalLM", "CAUSAL_LM"),
    "sequence_classification": ("AutoModelForSequenceClassification", "SEQ_CLS"),
}
PARAMS = {
    "task": Param("causal_lm", "the head: causal_lm (next-token logits) or sequence_classification (one class per "
                  "sequence, data.num_classes of them)", str, choices=tuple(TASKS)),
    "path": Param(None, "a local folder save_pretrained wrote (config and weights): from_pretrained(path), never a "
                  "download", str, extra=(None,)),
    "config": Param(None, "a fresh model of this config: AutoConfig.for_model(**config), e.g. {model_type: gpt2, "
                    "n_layer: 2, n_head: 2, n_embd: 64}; vocab_size (causal_lm) and num_labels "
                    "(sequence_classification) default to data.num_classes", dict,
                    fields={"model_type": Param(REQUIRED, "a transformers model type (gpt2, bert, llama, ...)", str)},
                    open_record=True, extra=(None,)),
    "lora": LORA,
}


@declare(**PARAMS)
def build_hf(
    *, task: str, path: str | None, config: Mapping[str, Any] | None, lora: Mapping[str, Any] | None,
    num_classes: int | None = None,
) -> nn.Module:
    """The ``task`` model from ``path`` or ``config`` (exactly one), with ``lora`` adapters;
    ``num_classes``: the data's classes (or vocabulary), for what the config leaves unsaid."""
    require((path is None) != (config is None), "model.path",
            "give either model.path (a local folder) or model.config (a fresh model), not both or neither")
    import transformers

    auto_class, peft_task = TASKS[task]
    auto = getattr(transformers, auto_class)
    if path is not None:
        folder = Path(path).expanduser()
        require(folder.is_dir(), "model.path", f"{folder} is not a directory: give a folder save_pretrained wrote "
                                               "(weights are never downloaded)")
        given = {"num_labels": num_classes} if task == "sequence_classification" and num_classes else {}
        try:
            model = auto.from_pretrained(folder, local_files_only=True, **given)
        except (OSError, ValueError, RuntimeError) as error:
            raise ConfigError("model.path", f"{folder}: {one_line(error, 200)}") from None
    else:
        model = auto.from_config(_config(transformers, task, dict(config), num_classes))
    if task == "causal_lm":
        model.config.use_cache = False  # training needs no key/value cache: it would only hold memory
    return with_lora(model, lora, task_type=peft_task)


def _config(transformers: Any, task: str, values: dict[str, Any], num_classes: int | None) -> Any:
    """``AutoConfig.for_model(**values)``, the data's classes filling in what ``values`` leaves unsaid."""
    filled = "vocab_size" if task == "causal_lm" else "num_labels"
    if filled not in values:
        require(num_classes is not None or task == "causal_lm", "data.num_classes",
                "sequence_classification needs the number of classes: set data.num_classes or model.config.num_labels")
        if num_classes is not None:
            values[filled] = num_classes
    try:
        return transformers.AutoConfig.for_model(**values)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError("model.config", one_line(error, 160)) from None


def shifts_labels(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face causal language model, whose ``labels`` are its
    ``input_ids`` (shifted inside it: the logits at t score label t + 1), as Hugging Face's
    ``Trainer`` decides it: a class ``AutoModelForCausalLM`` builds (or one derived from it), or
    whose ``loss_type`` is ``ForCausalLM``, but not an encoder-decoder (its labels align with the
    decoder's logits). Adapters (peft) are looked through. False for any other model."""
    if "transformers" not in sys.modules:  # no Hugging Face model can exist
        return False
    from transformers import PreTrainedModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's PeftModel
    if not isinstance(base, PreTrainedModel) or getattr(base.config, "is_encoder_decoder", False):
        return False
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return getattr(base, "loss_type", None) == "ForCausalLM" or any(c.__name__ in causal for c in type(base).__mro__)
