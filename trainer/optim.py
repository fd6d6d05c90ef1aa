"""Optimizer factory with named parameter groups, each carrying its own base LR.

Every group stores ``name`` and ``lr_scale`` (its base LR over ``optimizer.lr``): schedules give
the LR of a group whose base LR is ``optimizer.lr``, and each group gets that times its scale.
Later features (layer-wise decay, discriminative fine-tuning) only have to set other scales.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from omegaconf import DictConfig
from torch import nn

from trainer.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into ``decay`` and ``no_decay`` (biases, norm weights: ndim < 2;
    embedding tables, including an output layer tied to one).

    Decaying a bias or a norm's gain only pulls the layer's scale towards 0, and decaying an
    embedding shrinks the rows of rare tokens, which get few gradient updates to push back; the
    usual recipes (BERT, GPT, timm) exempt them. Empty groups are left out.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or id(param) in embeddings else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: DictConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`parameter_groups`; fused kernels on CUDA, foreach elsewhere."""
    groups = parameter_groups(model, cfg.weight_decay) if cfg.no_decay_bias_and_norm else [
        {"name": "all", "params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}
    ]
    for group in groups:
        group["lr_scale"] = 1.0
    fast = _implementation(device)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **fast)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fast)
    raise ConfigError("optimizer", f"unknown optimizer {cfg.name!r}; known: adamw, sgd")


def _implementation(device: torch.device) -> dict[str, bool | None]:
    """Fused kernels on CUDA (one launch per step, and they take the GradScaler's skip flag on
    the device), foreach elsewhere."""
    return {"fused": True, "foreach": None} if device.type == "cuda" else {"fused": None, "foreach": True}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict`` that keeps this run's kernels: torch restores each group's
    ``fused``/``foreach`` flags from the checkpoint, so a CPU checkpoint resumed on a GPU would
    step with foreach kernels that refuse the GradScaler's arguments (and the reverse)."""
    device = next(iter(trainable_parameters(optimizer))).device
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(_implementation(device))


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the parameter groups, in order."""
    return [g["name"] for g in optimizer.param_groups]


def trainable_parameters(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    """Every parameter the optimizer updates (what gradient clipping must see)."""
    return [p for g in optimizer.param_groups for p in g["params"]]
