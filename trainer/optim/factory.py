"""The optimizer: ``optimizer._target_`` over named parameter groups, its declared keys, and its
state in checkpoints.

Every group stores ``name`` and ``lr_scale`` (its base LR over ``optimizer.lr``): schedules give
the LR of a group whose base LR is ``optimizer.lr``, and each group gets that times its scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.components import build, shipped_targets, target_of
from trainer.errors import ConfigError
from trainer.optim import schedule_free
from trainer.optim.groups import RULE, parameter_groups
from trainer.optim.unfreeze import Stage
from trainer.params import Param, check_params

#: Keys every optimizer config has (conf/optimizer/*.yaml), besides ``name``.
COMMON: dict[str, Param] = {
    "lr": Param(1e-3, "η: peak LR (the schedule's reference; per-group LRs scale from it)", float, low=0, low_open=True),
    "lr_scaling": Param("none", "every LR × (B/reference_batch_size)^(0, ½ or 1), B = the global batch (batch × ranks × accumulation)", str,
                        choices=("none", "sqrt", "linear")),
    "reference_batch_size": Param(256, "the batch size optimizer.lr is meant for (seed 002)", int, low=1),
    "weight_decay": Param(0.01, "decoupled weight decay (AdamW) or L2 penalty (SGD)", float, low=0),
    "no_decay_bias_and_norm": Param(True, "biases, norm weights and embeddings go to a group without decay", bool),
    "lr_scales": Param(None, "module name -> LR multiplier (seed 002's layered LRs)", dict, item=float, low=0,
                       low_open=True, extra=(None,)),
    "layer_decay": Param(None, "layer-wise LR decay: depth d of D trains at layer_decay^(D-d) x its LR", float, low=0,
                         high=1, low_open=True, extra=(None,)),
    "layer_order": Param(None, "module names bottom to top, one depth each, for layer_decay on a model without "
                               "its own order", list, item=str, min_items=1, extra=(None,)),
    "param_groups": Param([], "rules {match, lr_scale, weight_decay, schedule} over parameter names; the first match "
                          "wins", list, item=dict, fields=RULE),
    "weight_decay_schedule": Param("none", "none: each group keeps its weight decay λ; lr: λ × its LR schedule's shape "
                                   "lr(t)/peak; a schedule name or {name: ..., its keys}: λ × that schedule's shape", str,
                                   or_mapping=True),
}

#: Each optimizer's own keys, with the defaults of its YAML (which may also differ in lr and
#: weight_decay: see :func:`optimizer_params`).
OWN: dict[str, dict[str, Param]] = {
    "adamw": {
        "betas": Param((0.9, 0.999), "Adam's moment decay rates (beta1, beta2)", list, item=float, low=0, high=1,
                       high_open=True, length=2),
        "eps": Param(1e-8, "added to the denominator", float, low=0, low_open=True),
    },
    "sgd": {
        "momentum": Param(0.9, "heavy-ball momentum", float, low=0, high=1),
        "nesterov": Param(False, "Nesterov momentum (needs momentum > 0)", bool),
    },
    # Schedule-free (optional extra): trained at y, validated and saved at x (trainer.optim.schedule_free).
    "schedule_free_adamw": {
        "betas": Param((0.9, 0.999), "beta1: the y-z interpolation; beta2: the second moment's decay", list,
                       item=float, low=0, high=1, low_open=True, high_open=True, length=2),
        "eps": Param(1e-8, "added to the denominator", float, low=0, low_open=True),
        **schedule_free.METHOD,
        **schedule_free.KEYS,
    },
    "schedule_free_sgd": {
        "momentum": Param(0.9, "the y-z interpolation (0 < momentum < 1)", float, low=0, high=1, low_open=True,
                          high_open=True),
        **schedule_free.METHOD,
        **schedule_free.KEYS,
    },
}

#: Where an optimizer's YAML departs from the common defaults.
_DEFAULTS = {
    "sgd": {"lr": 0.1, "weight_decay": 5e-4},
    # The package's own defaults: schedule-free SGD wants a far larger LR than SGD with a schedule.
    "schedule_free_adamw": {"lr": 2.5e-3, "weight_decay": 0.0},
    "schedule_free_sgd": {"lr": 1.0, "weight_decay": 0.0},
}


def optimizer_params(name: str) -> dict[str, Param]:
    """Every key of optimizer ``name`` (but ``name``) with its declaration."""
    if name not in OWN:
        raise ConfigError("optimizer.name", f"got {name!r}; expected one of {', '.join(OWN)}")
    params = {**COMMON, **OWN[name]}
    for key, default in _DEFAULTS.get(name, {}).items():
        p = params[key]
        params[key] = Param(default, p.doc, p.kind, p.low, p.high, p.low_open, p.high_open, p.choices, p.extra)
    return params


def check_optimizer(cfg: DictConfig) -> None:
    """ConfigError unless every key of ``optimizer.*`` is declared and allowed: a shipped optimizer's
    (``optimizer.name`` with its own ``_target_``) all of them; another ``_target_``'s the keys the
    trainer reads (:data:`COMMON`), the rest being the class's arguments, which its signature decides."""
    name, target = cfg.get("name"), target_of(cfg, "optimizer")
    schedule_free.check_installed(cfg)
    shipped = target == shipped_targets("optimizer").get(name)
    if shipped:
        params = {k: v for k, v in cfg.items() if k not in ("name", "_target_")}
        check_params(optimizer_params(name), params, "optimizer", owner=f"optimizer {name!r}")
    else:
        ours = {**COMMON, **(schedule_free.KEYS if schedule_free.names_schedule_free(cfg) else {})}
        check_params(ours, {k: v for k, v in cfg.items() if k in ours}, "optimizer", owner=f"optimizer {target!r}")
    if cfg.get("layer_order") is not None and cfg.get("layer_decay") is None:
        raise ConfigError("optimizer.layer_order", "is read only with optimizer.layer_decay: set that too "
                                                   "(e.g. optimizer.layer_decay=0.75), or leave layer_order null")
    if shipped and name == "sgd" and cfg.nesterov and not cfg.momentum > 0:
        raise ConfigError(
            "optimizer.nesterov",
            "nesterov needs optimizer.momentum > 0; set optimizer.momentum=0.9 or optimizer.nesterov=false",
        )


#: ``optimizer.*`` keys the trainer reads itself (groups, scaling, the label, schedule-free's
#: switches); the others are the ``_target_`` class's keyword arguments (betas, eps, momentum, ...).
OURS = ("name", *COMMON, *schedule_free.KEYS)


def build_optimizer(
    cfg: DictConfig, model: nn.Module, device: torch.device, *, unfreeze: Sequence[Stage] = ()
) -> torch.optim.Optimizer:
    """``optimizer._target_`` (any ``torch.optim.Optimizer`` class: AdamW, SGD, RAdam, ...) over
    :func:`parameter_groups`, with the config's other keys as its keyword arguments (lists become
    tuples, e.g. betas); fused kernels on CUDA, foreach elsewhere, where the class takes them.

    ``unfreeze``: ``trainer.unfreeze``'s stages, whose modules get groups of their own.
    """
    groups = parameter_groups(
        model, cfg.weight_decay, lr_scales=cfg.get("lr_scales"), split_decay=cfg.no_decay_bias_and_norm,
        layer_decay=cfg.get("layer_decay"), layer_order=cfg.get("layer_order"), rules=cfg.get("param_groups") or (),
        unfreeze=unfreeze,
    )
    scheduled_decay = cfg.get("weight_decay_schedule", "none") != "none"
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
        if scheduled_decay:  # what optimizer.weight_decay_schedule scales at every update
            group["base_weight_decay"] = group["weight_decay"]
    config = OmegaConf.to_container(cfg, resolve=True)
    config["_target_"] = target_of(cfg, "optimizer")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k not in OURS + ("_target_",)}
    optimizer = build(
        {"_target_": config["_target_"]}, "optimizer", groups, runtime=_implementation(device), lr=cfg.lr, **kwargs
    )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            "optimizer._target_", f"{config['_target_']} built a {type(optimizer).__name__}, not a torch.optim.Optimizer"
        )
    return optimizer


def _implementation(device: torch.device) -> dict[str, bool | None]:
    """Fused kernels on CUDA (one launch per step, and they take the GradScaler's skip flag on
    the device), foreach elsewhere."""
    return {"fused": True, "foreach": None} if device.type == "cuda" else {"fused": None, "foreach": True}


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` plus the optimizer's kind, which :func:`load_optimizer_state` checks."""
    return {**optimizer.state_dict(), "kind": type(optimizer).__name__}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's per-parameter state (moments, step counts) and keep this run's group
    settings (but a schedule-free optimizer's running entries, :data:`~trainer.optim.schedule_free.GROUP_STATE`):
    its kernels, LR scales and hyper-parameters come from its config (a resume refuses
    changed ones, see :func:`trainer.rundir.resume.schedule_fingerprint`), and the schedule sets LR and
    momentum again before the next update.

    torch would take every group key from the checkpoint: a CPU checkpoint resumed on a GPU would
    keep foreach kernels (which refuse the GradScaler's arguments) and leave AdamW's step counts
    on the CPU, where the fused kernel cannot read them; giving torch this run's flags lets it
    place the state itself. Raises ValueError when the state is another optimizer's or the groups
    hold other parameters.
    """
    kind = state["kind"]
    if kind != type(optimizer).__name__:
        raise ValueError(f"it holds {kind} state, which does not fit {type(optimizer).__name__}: keep optimizer.name")
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the checkpoint has {len(saved_groups)} parameter groups and this run {len(optimizer.param_groups)}: "
            "were optimizer.lr_scales or optimizer.no_decay_bias_and_norm changed?"
        )
    for saved, current in zip(saved_groups, optimizer.param_groups):
        if saved["param_names"] != current["param_names"]:
            raise ValueError(
                f"parameter group {current['name']!r} holds other parameters than the checkpoint's "
                f"{saved.get('name')!r}: were optimizer.lr_scales or optimizer.no_decay_bias_and_norm changed?"
            )
    # A schedule-free group's step count and averaging weights are state, not settings.
    groups = [
        {**{k: v for k, v in current.items() if k != "params"},
         **{k: saved[k] for k in schedule_free.GROUP_STATE if k in saved and k in current}, "params": saved["params"]}
        for saved, current in zip(saved_groups, optimizer.param_groups)
    ]
    optimizer.load_state_dict({"state": state["state"], "param_groups": groups})
    # torch casts the state to each parameter's device and dtype but not its memory layout: a CPU
    # run's NCHW moments next to a GPU run's channels_last weights would be refused by the fused
    # kernels (and read wrongly by others).
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                param_state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
