"""Optimizer factory with named parameter groups, each carrying its own base LR.

Every group stores ``name`` and ``lr_scale`` (its base LR over ``optimizer.lr``): schedules give
the LR of a group whose base LR is ``optimizer.lr``, and each group gets that times its scale.
``optimizer.lr_scales`` sets the scales per module (layered / discriminative LRs, layer-wise
decay written out per layer).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.components import build, shipped_targets
from trainer.errors import ConfigError
from trainer.finetune import Stage
from trainer.layer_decay import layer_scales
from trainer.params import REQUIRED, Param, check_params

#: The keys of one ``optimizer.param_groups`` rule.
RULE: dict[str, Param] = {
    "match": Param(REQUIRED, "a glob over parameter names, e.g. '*.bias' or 'blocks.*.attn.*'", str),
    "lr_scale": Param(1.0, "LR multiplier of the parameters it matches", float, low=0, low_open=True),
    "weight_decay": Param(None, "their weight decay (no-decay parameters keep 0); null: optimizer.weight_decay",
                          float, low=0, extra=(None,)),
}

#: Keys every optimizer config has (conf/optimizer/*.yaml), besides ``name``.
COMMON: dict[str, Param] = {
    "lr": Param(1e-3, "η: peak LR (the schedule's reference; per-group LRs scale from it)", float, low=0, low_open=True),
    "lr_scaling": Param("none", "every LR × (B/reference_batch_size)^(0, ½ or 1), B = batch × accumulation", str,
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
    "param_groups": Param([], "rules {match, lr_scale, weight_decay} over parameter names; the first match wins",
                          list, item=dict, fields=RULE),
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
}
#: Where an optimizer's YAML departs from the common defaults.
_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 5e-4}}


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
    name, target = cfg.get("name"), cfg.get("_target_")
    shipped = target is None or target == shipped_targets("optimizer").get(name)
    if shipped:
        params = {k: v for k, v in cfg.items() if k not in ("name", "_target_")}
        check_params(optimizer_params(name), params, "optimizer", owner=f"optimizer {name!r}")
    else:
        check_params(COMMON, {k: v for k, v in cfg.items() if k in COMMON}, "optimizer", owner=f"optimizer {target!r}")
    if cfg.get("layer_order") is not None and cfg.get("layer_decay") is None:
        raise ConfigError("optimizer.layer_order", "is read only with optimizer.layer_decay: set that too "
                                                   "(e.g. optimizer.layer_decay=0.75), or leave layer_order null")
    if shipped and name == "sgd" and cfg.nesterov and not cfg.momentum > 0:
        raise ConfigError(
            "optimizer.nesterov",
            "nesterov needs optimizer.momentum > 0; set optimizer.momentum=0.9 or optimizer.nesterov=false",
        )


def parameter_groups(
    model: nn.Module, weight_decay: float, *, lr_scales: Mapping[str, float] | None = None, split_decay: bool = True,
    layer_decay: float | None = None, layer_order: Sequence[str] | None = None,
    rules: Sequence[Mapping[str, Any]] = (), unfreeze: Sequence[Stage] = (),
) -> list[dict]:
    """Trainable parameters in named groups, each with its ``weight_decay`` and ``lr_scale``.

    ``split_decay``: ``decay`` and ``no_decay`` (biases, norm weights: ndim < 2; embedding tables,
    including an output layer tied to one). Decaying a bias or a norm's gain only pulls the
    layer's scale towards 0, and decaying an embedding shrinks the rows of rare tokens, which get
    few gradient updates to push back; the usual recipes (BERT, GPT, timm) exempt them.
    Otherwise one group, ``all``.

    On top of that split, each of these puts a parameter in a group of its own and multiplies its
    LR scale (all that apply, multiplied), the group's name saying which did (``decay/layer1``,
    ``no_decay/depth0/unfreeze1``):

    - ``lr_scales`` maps module names to LR multipliers (seed 002's layered LRs, e.g.
      ``{layer1: 0.1, layer2: 0.1, layer3: 0.5}``): a parameter takes the scale of the longest name
      that is its module or a parent of it, else 1.0 (label: the module name).
    - ``layer_decay``: depth d of D gets ``layer_decay^(D - d)`` (:mod:`trainer.layer_decay`;
      label ``depthD``).
    - ``rules``: ``optimizer.param_groups``, ``{match, lr_scale, weight_decay}``: the first rule
      whose glob matches the parameter's name sets its scale and, when given, the weight decay of
      its decayed parameters (no-decay ones keep 0); label: the glob.
    - ``unfreeze``: a stage's modules (label ``unfreezeK``, K its 1-based place), whose groups
      carry ``unfreeze_at`` (:mod:`trainer.finetune`).

    Empty groups are left out; every trainable parameter is in exactly one group.
    """
    lr_scales = {str(module): scale for module, scale in (lr_scales or {}).items()}  # YAML may give 0: for "0"
    names = [name for name, _ in model.named_parameters()]
    _check_modules(model, names, {prefix: f"optimizer.lr_scales.{prefix}" for prefix in lr_scales})
    stage_of = {module: stage for stage in unfreeze for module in stage.modules}
    _check_modules(model, names, {module: f"trainer.unfreeze.{stage.index}.modules" for module, stage in stage_of.items()})
    rule_of = _match_rules(model, names, rules)
    depths = layer_scales(model, layer_decay, layer_order) if layer_decay is not None else {}
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[str, tuple[str, ...]], dict] = {}
    for name, param in model.named_parameters():  # a tied parameter comes once
        if not param.requires_grad:
            continue
        kind = "all"
        if split_decay:
            kind = "no_decay" if param.ndim < 2 or id(param) in embeddings else "decay"
        labels, scale, decay = [], 1.0, weight_decay
        prefix = max((p for p in lr_scales if _under(name, p)), key=len, default=None)
        if prefix is not None:
            labels.append(prefix)
            scale *= float(lr_scales[prefix])
        if name in depths:
            depth, depth_scale = depths[name]
            labels.append(f"depth{depth}")
            scale *= depth_scale
        rule = rule_of.get(name)
        if rule is not None:
            labels.append(str(rule["match"]))
            scale *= float(rule.get("lr_scale", 1.0))
            if rule.get("weight_decay") is not None:
                decay = float(rule["weight_decay"])
        module = max((m for m in stage_of if _under(name, m)), key=len, default=None)
        stage = stage_of[module] if module is not None else None
        if stage is not None:
            labels.append(f"unfreeze{stage.index + 1}")
            scale *= stage.lr_scale
        group = groups.setdefault((kind, tuple(labels)), {
            "name": "/".join([kind, *labels]),
            "params": [],
            "param_names": [],  # saved with the optimizer state: a resume checks it gets the same parameters
            "weight_decay": 0.0 if kind == "no_decay" else decay,
            "lr_scale": scale,
            **({"unfreeze_at": stage.at_update} if stage is not None else {}),
        })
        group["params"].append(param)
        group["param_names"].append(name)
    # Groups at the base LR first (those lr_scales does not name, at scale 1): group 0 is the one
    # ``train/lr`` shows; groups frozen at the start last, by the update they join at.
    kinds = ("decay", "no_decay", "all")

    def order(key: tuple[str, tuple[str, ...]]) -> tuple[int, bool, int]:
        group = groups[key]
        scaled = group["lr_scale"] != 1.0 or any(label in lr_scales for label in key[1])
        return group.get("unfreeze_at", 0), scaled, kinds.index(key[0])

    return [groups[key] for key in sorted(groups, key=order)]


def _check_modules(model: nn.Module, names: list[str], keys: Mapping[str, str]) -> None:
    """ConfigError (naming ``keys[module]``) for a module name that holds no parameters of the model."""
    first_name = {id(param): name for name, param in reversed(list(model.named_parameters(remove_duplicate=False)))}
    for prefix, key in keys.items():
        if any(_under(name, prefix) for name in names):
            continue
        tied = sorted({first_name[id(param)] for name, param in model.named_parameters(remove_duplicate=False)
                       if _under(name, prefix)})
        if tied:  # e.g. gpt's lm_head, whose weight is the token embedding's
            raise ConfigError(
                key, f"{prefix} holds only parameters tied to {', '.join(tied)}, which go with that module: "
                     "name that module instead",
            )
        children = ", ".join(name for name, _ in model.named_children())
        raise ConfigError(
            key, f"{prefix} names no parameters of this model; its top-level modules are {children} "
                 "(nest with dots, e.g. layer1.0)",
        )


def _match_rules(model: nn.Module, names: list[str], rules: Sequence[Mapping[str, Any]]) -> dict[str, Mapping]:
    """Parameter name -> the first ``optimizer.param_groups`` rule whose glob matches it; a rule
    that matches no parameter is a ConfigError listing the model's modules."""
    rule_of: dict[str, Mapping] = {}
    for index, rule in enumerate(rules):
        matched = [name for name in names if fnmatch.fnmatchcase(name, str(rule["match"]))]
        if not matched:
            modules = [name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
            raise ConfigError(
                f"optimizer.param_groups.{index}.match",
                f"{rule['match']!r} matches no parameter name (globs over names such as {names[0]}); the model's "
                f"modules are {', '.join(modules)}",
            )
        for name in matched:
            rule_of.setdefault(name, rule)
    return rule_of


def _under(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` belongs to module ``prefix`` (or is it)."""
    return name == prefix or name.startswith(prefix + ".")


#: ``optimizer.*`` keys the trainer reads itself (groups, scaling, the label); the others are the
#: ``_target_`` class's keyword arguments (betas, eps, momentum, ...).
OURS = ("name", *COMMON)


def build_optimizer(
    cfg: DictConfig, model: nn.Module, device: torch.device, *, unfreeze: Sequence[Stage] = ()
) -> torch.optim.Optimizer:
    """``optimizer._target_`` (any ``torch.optim.Optimizer`` class: AdamW, SGD, RAdam, ...) over
    :func:`parameter_groups`, with the config's other keys as its keyword arguments (lists become
    tuples, e.g. betas); fused kernels on CUDA, foreach elsewhere, where the class takes them.

    A config without ``_target_`` (from before targets) takes it from the shipped
    ``conf/optimizer/NAME.yaml``. ``unfreeze``: ``trainer.unfreeze``'s stages, whose modules get
    groups of their own.
    """
    groups = parameter_groups(
        model, cfg.weight_decay, lr_scales=cfg.get("lr_scales"), split_decay=cfg.no_decay_bias_and_norm,
        layer_decay=cfg.get("layer_decay"), layer_order=cfg.get("layer_order"), rules=cfg.get("param_groups") or (),
        unfreeze=unfreeze,
    )
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    config = OmegaConf.to_container(cfg, resolve=True)
    if config.get("_target_") is None:
        known = shipped_targets("optimizer")
        if cfg.get("name") not in known:
            raise ConfigError("optimizer", f"unknown optimizer {cfg.get('name')!r}; known: {', '.join(known)}")
        config["_target_"] = known[cfg.name]
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


def _kind_of(per_parameter: dict) -> str | None:
    """AdamW or SGD, from the keys of a saved per-parameter state (None before any step)."""
    keys = {key for param_state in per_parameter.values() for key in param_state}
    if "exp_avg" in keys:
        return "AdamW"
    return "SGD" if "momentum_buffer" in keys else None


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's per-parameter state (moments, step counts) and keep this run's group
    settings: its kernels, LR scales and hyper-parameters come from its config (a resume refuses
    changed ones, see :func:`trainer.run.schedule_fingerprint`), and the schedule sets LR and
    momentum again before the next update.

    torch would take every group key from the checkpoint: a CPU checkpoint resumed on a GPU would
    keep foreach kernels (which refuse the GradScaler's arguments) and leave AdamW's step counts
    on the CPU, where the fused kernel cannot read them; giving torch this run's flags lets it
    place the state itself. Raises ValueError when the state is another optimizer's or the groups
    hold other parameters.
    """
    kind = state.get("kind") or _kind_of(state["state"])  # the state's keys tell older checkpoints' kind
    if kind is not None and kind != type(optimizer).__name__:
        raise ValueError(f"it holds {kind} state, which does not fit {type(optimizer).__name__}: keep optimizer.name")
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the checkpoint has {len(saved_groups)} parameter groups and this run {len(optimizer.param_groups)}: "
            "were optimizer.lr_scales or optimizer.no_decay_bias_and_norm changed?"
        )
    for saved, current in zip(saved_groups, optimizer.param_groups):
        names = saved.get("param_names")  # checkpoints written before groups carried names have none
        if names is not None and names != current["param_names"]:
            raise ValueError(
                f"parameter group {current['name']!r} holds other parameters than the checkpoint's "
                f"{saved.get('name')!r}: were optimizer.lr_scales or optimizer.no_decay_bias_and_norm changed?"
            )
    groups = [
        {**{k: v for k, v in current.items() if k != "params"}, "params": saved["params"]}
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


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the parameter groups, in order."""
    return [g["name"] for g in optimizer.param_groups]


def trainable_parameters(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    """Every parameter the optimizer updates (what gradient clipping must see)."""
    return [p for g in optimizer.param_groups for p in g["params"]]


#: Written into the run directory at the start: the groups as the optimizer holds them.
GROUPS_FILE = "param_groups.md"


def group_table(optimizer: torch.optim.Optimizer) -> str:
    """A Markdown table of the parameter groups: name, tensors, parameters (elements), LR scale,
    weight decay and the update a frozen group joins at; a last row sums the tensors and
    parameters, which counts each tensor once."""
    header = ["group", "tensors", "parameters", "lr_scale", "weight_decay", "trains from update"]
    rows = [
        [g["name"], str(len(g["params"])), f"{sum(p.numel() for p in g['params']):,}", f"{g['lr_scale']:.6g}",
         f"{g['weight_decay']:g}", str(g.get("unfreeze_at", 0))]
        for g in optimizer.param_groups
    ]
    params = trainable_parameters(optimizer)
    rows.append(["total", str(len(params)), f"{sum(p.numel() for p in params):,}", "", "", ""])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_group_table(optimizer: torch.optim.Optimizer, run_dir: Path) -> str:
    """Write :func:`group_table` to ``run_dir/param_groups.md``; returns it."""
    table = group_table(optimizer)
    (run_dir / GROUPS_FILE).write_text(f"# Parameter groups\n\n{table}\n", encoding="utf-8")
    return table


def custom_groups(cfg: DictConfig, unfreeze: Sequence[Any]) -> bool:
    """Whether the groups are more than the no-decay split (then the table is printed at start)."""
    return bool(cfg.get("lr_scales") or cfg.get("layer_decay") is not None or cfg.get("param_groups") or unfreeze)
