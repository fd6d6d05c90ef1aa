"""``model.lora``: low-rank adapters (Hu et al. 2021, through ``peft``) on any model, so that only
they train.

Each adapted linear layer W (frozen) gains ``B A`` (rank ``r``, A Gaussian, B zero at the start, so
the model begins as it was) scaled by ``alpha / r``. The model's own weights keep
``requires_grad=False`` and get no gradient, so the optimizer never moves them (weight decay
included): they stay bit for bit as loaded. ``peft`` is imported only when a run asks for adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from trainer.errors import ConfigError, one_line
from trainer.params import Param, defaults_of_record

#: ``model.lora``'s keys, with peft's ``LoraConfig`` names beside them in the docs.
LORA_FIELDS = {
    "r": Param(8, "rank of each adapter (LoraConfig r)", int, low=1),
    "alpha": Param(16.0, "the adapter's output is scaled by alpha / r (LoraConfig lora_alpha)", float, low=0,
                   low_open=True),
    "dropout": Param(0.0, "dropout on each adapter's input (LoraConfig lora_dropout)", float, low=0, high=1,
                     high_open=True),
    "target_modules": Param(None, "modules to adapt, by name or name suffix (e.g. [c_attn] for GPT-2, [query, value] "
                            "for BERT), or all-linear; null: peft's default for a Hugging Face model type",
                            list, item=str, min_items=1, extra=(None, "all-linear")),
}
LORA = Param(None, "LoRA adapters (peft), the only parameters that train: {r, alpha, dropout, target_modules}; "
             "null: none, every parameter trains", dict, fields=LORA_FIELDS, extra=(None,))


def with_lora(model: nn.Module, lora: Mapping[str, Any] | None, *, task_type: str | None = None) -> nn.Module:
    """``model`` wrapped by ``peft.get_peft_model`` with the adapters ``lora`` (checked against
    :data:`LORA`) describes, or ``model`` itself for None. ``task_type`` is peft's (``CAUSAL_LM``,
    ``SEQ_CLS``: a classifier's new head trains too), None for any other model."""
    if lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    values = defaults_of_record(LORA_FIELDS, lora)
    targets = values["target_modules"]
    try:
        config = LoraConfig(
            r=values["r"], lora_alpha=values["alpha"], lora_dropout=values["dropout"], task_type=task_type,
            target_modules=list(targets) if targets is not None and targets != "all-linear" else targets,
        )
        return get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as error:  # no such module, or no default for this model type
        raise ConfigError("model.lora.target_modules", f"peft cannot adapt {type(model).__name__}: "
                          f"{one_line(error)}") from None
