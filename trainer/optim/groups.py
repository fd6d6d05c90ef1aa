"""Parameter groups: which parameters train together, at which LR scale and weight decay.

``optimizer.lr_scales`` (per module), ``optimizer.layer_decay`` (per depth),
``optimizer.param_groups`` (glob rules) and ``trainer.unfreeze`` (stages) each put a parameter in
a group of its own; ``param_groups.md`` in the run directory shows the result."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from trainer.errors import ConfigError
from trainer.files import write_atomic
from trainer.optim.layer_decay import layer_scales
from trainer.optim.names import names_nothing, under
from trainer.optim.unfreeze import Stage
from trainer.params import REQUIRED, Param

#: The keys of one ``optimizer.param_groups`` rule.
RULE: dict[str, Param] = {
    "match": Param(REQUIRED, "a glob over parameter names, e.g. '*.bias' or 'blocks.*.attn.*'", str),
    "lr_scale": Param(1.0, "LR multiplier of the parameters it matches", float, low=0, low_open=True),
    "weight_decay": Param(None, "their weight decay (no-decay parameters keep 0); null: optimizer.weight_decay",
                          float, low=0, extra=(None,)),
    # Checked and bound with the schedules (trainer.schedules.named), which this layer may not import.
    "schedule": Param(None, "their own LR schedule instead of the run's: a schedule name (constant) or {name: ..., its "
                            "keys}, bound with the run's η, interval, length and warmup; × lr_scale", str,
                      extra=(None,), or_mapping=True),
}


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
    - ``layer_decay``: depth d of D gets ``layer_decay^(D - d)`` (:mod:`trainer.optim.layer_decay`;
      label ``depthD``).
    - ``rules``: ``optimizer.param_groups``, ``{match, lr_scale, weight_decay, schedule}``: the
      first rule whose glob matches the parameter's name sets its scale and, when given, the weight
      decay of its decayed parameters (no-decay ones keep 0); label: the glob. A rule's own
      ``schedule`` is bound with the run's (:mod:`trainer.schedules.named`); its groups carry
      ``schedule_rule``, the rule's index, which tells the schedule to follow.
    - ``unfreeze``: a stage's modules (label ``unfreezeK``, K its 1-based place), whose groups
      carry ``unfreeze_at`` (:mod:`trainer.optim.unfreeze`).

    Empty groups are left out; every trainable parameter is in exactly one group.
    """
    lr_scales = {str(module): scale for module, scale in (lr_scales or {}).items()}  # YAML may give 0: for "0"
    names = [name for name, _ in model.named_parameters()]
    _check_modules(model, names, {prefix: f"optimizer.lr_scales.{prefix}" for prefix in lr_scales})
    stage_of = {module: stage for stage in unfreeze for module in stage.modules}
    _check_modules(model, names, {module: f"trainer.unfreeze.{stage.index}.modules" for module, stage in stage_of.items()})
    placing = _Placing(
        lr_scales, layer_scales(model, layer_decay, layer_order) if layer_decay is not None else {},
        rules, _match_rules(model, names, rules), stage_of, weight_decay,
    )
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[str, tuple[str, ...]], dict] = {}
    for name, param in model.named_parameters():  # a tied parameter comes once
        if not param.requires_grad:
            continue
        kind = ("no_decay" if param.ndim < 2 or id(param) in embeddings else "decay") if split_decay else "all"
        labels, scale, decay, stage, own_schedule = placing.place(name)
        group = groups.setdefault((kind, tuple(labels)), {
            "name": "/".join([kind, *labels]),
            "params": [],
            "param_names": [],  # saved with the optimizer state: a resume checks it gets the same parameters
            "weight_decay": 0.0 if kind == "no_decay" else decay,
            "lr_scale": scale,
            **({"unfreeze_at": stage.at_update} if stage is not None else {}),
            **({"schedule_rule": own_schedule} if own_schedule is not None else {}),
        })
        group["params"].append(param)
        group["param_names"].append(name)
    return _ordered(groups, lr_scales)


def _ordered(groups: Mapping[tuple[str, tuple[str, ...]], dict], lr_scales: Mapping[str, float]) -> list[dict]:
    """Groups at the base LR first (those ``lr_scales`` does not name, at scale 1): group 0 is the
    one ``train/lr`` shows; groups frozen at the start last, by the update they join at."""
    kinds = ("decay", "no_decay", "all")

    def order(key: tuple[str, tuple[str, ...]]) -> tuple[int, bool, int]:
        group = groups[key]
        scaled = group["lr_scale"] != 1.0 or any(label in lr_scales for label in key[1])
        return group.get("unfreeze_at", 0), scaled, kinds.index(key[0])

    return [groups[key] for key in sorted(groups, key=order)]


@dataclass(frozen=True)
class _Placing:
    """What puts a parameter in a group of its own, by its name (see :func:`parameter_groups`)."""

    lr_scales: Mapping[str, float]  # module -> LR multiplier
    depths: Mapping[str, tuple[int, float]]  # parameter -> (depth, multiplier)
    rules: Sequence[Mapping[str, Any]]  # optimizer.param_groups
    rule_of: Mapping[str, int]  # parameter -> the index of its rule
    stage_of: Mapping[str, Stage]  # module -> its unfreeze stage
    weight_decay: float

    def place(self, name: str) -> tuple[list[str], float, float, Stage | None, int | None]:
        """The labels, LR scale, weight decay (of a decayed parameter) and unfreeze stage of
        ``name``, and the index of its rule when that names its own schedule."""
        labels, scale, decay = [], 1.0, self.weight_decay
        prefix = max((p for p in self.lr_scales if under(name, p)), key=len, default=None)
        if prefix is not None:
            labels.append(prefix)
            scale *= float(self.lr_scales[prefix])
        if name in self.depths:
            depth, depth_scale = self.depths[name]
            labels.append(f"depth{depth}")
            scale *= depth_scale
        index = self.rule_of.get(name)
        rule = self.rules[index] if index is not None else None
        if rule is not None:
            labels.append(str(rule["match"]))
            scale *= float(rule.get("lr_scale", 1.0))
            if rule.get("weight_decay") is not None:
                decay = float(rule["weight_decay"])
        module = max((m for m in self.stage_of if under(name, m)), key=len, default=None)
        stage = self.stage_of[module] if module is not None else None
        if stage is not None:
            labels.append(f"unfreeze{stage.index + 1}")
            scale *= stage.lr_scale
        return labels, scale, decay, stage, index if rule is not None and rule.get("schedule") is not None else None


def _check_modules(model: nn.Module, names: list[str], keys: Mapping[str, str]) -> None:
    """ConfigError (naming ``keys[module]``) for a module name that holds no parameters of the model."""
    first_name = {id(param): name for name, param in reversed(list(model.named_parameters(remove_duplicate=False)))}
    for prefix, key in keys.items():
        if any(under(name, prefix) for name in names):
            continue
        tied = sorted({first_name[id(param)] for name, param in model.named_parameters(remove_duplicate=False)
                       if under(name, prefix)})
        if tied:  # e.g. gpt's lm_head, whose weight is the token embedding's
            raise ConfigError(
                key, f"{prefix} holds only parameters tied to {', '.join(tied)}, which go with that module: "
                     "name that module instead",
            )
        raise ConfigError(key, names_nothing(model, prefix))


def _match_rules(model: nn.Module, names: list[str], rules: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Parameter name -> the index of the first ``optimizer.param_groups`` rule whose glob matches
    it; a rule that matches no parameter, or only parameters an earlier rule took, is a ConfigError."""
    first_of: dict[str, int] = {}  # parameter name -> the index of the rule that took it
    for index, rule in enumerate(rules):
        matched = [name for name in names if fnmatch.fnmatchcase(name, str(rule["match"]))]
        if matched and all(name in first_of for name in matched):
            earlier = sorted({first_of[name] for name in matched})
            raise ConfigError(
                f"optimizer.param_groups.{index}.match",
                f"{rule['match']!r} matches only parameters that rule(s) {earlier} took first (the first match wins), "
                "so it never applies: put it before them, or narrow their match",
            )
        if not matched:
            modules = [name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
            raise ConfigError(
                f"optimizer.param_groups.{index}.match",
                f"{rule['match']!r} matches no parameter name (globs over names such as {names[0]}); the model's "
                f"modules are {', '.join(modules)}",
            )
        for name in matched:
            first_of.setdefault(name, index)
    return first_of


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
    write_atomic(run_dir / GROUPS_FILE, f"# Parameter groups\n\n{table}\n")
    return table


def custom_groups(cfg: DictConfig, unfreeze: Sequence[Any]) -> bool:
    """Whether the groups are more than the no-decay split (then the table is printed at start)."""
    return bool(cfg.get("lr_scales") or cfg.get("layer_decay") is not None or cfg.get("param_groups") or unfreeze)
