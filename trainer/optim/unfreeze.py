"""Gradual unfreezing (``trainer.unfreeze``): modules that stay frozen until an update.

An unfreeze stage's parameters sit in groups of their own (:func:`trainer.optim.groups.parameter_groups`
tags them with ``unfreeze_at``, in updates). Until that update they have ``requires_grad`` False,
so they get no gradient and the optimizer skips them entirely: no update, no weight decay, no
optimizer state; their groups' LR reads 0. Whether a group is frozen is a pure function of the
update count, so a resume recreates it exactly. BatchNorm running statistics of a frozen module
keep updating in training mode (as Lightning's ``BackboneFinetuning`` does by default)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from trainer.errors import ConfigError
from trainer.params import REQUIRED, Param, defaults_of_record

#: The keys of one ``trainer.unfreeze`` stage.
STAGE: dict[str, Param] = {
    "at": Param(REQUIRED, "when the modules join, in schedule.interval units (update, epoch, example or token)",
                int, low=0),
    "modules": Param(REQUIRED, "module names (e.g. layer4, blocks.5) frozen until then", list, item=str,
                     min_items=1),
    "lr_scale": Param(1.0, "their LR multiplier once they train", float, low=0, low_open=True),
}

#: ``trainer.unfreeze`` (conf/trainer/default.yaml).
UNFREEZE = Param([], "stages {at, modules, lr_scale}: the modules stay frozen until update (or epoch) at", list,
                 item=dict, fields=STAGE)


@dataclass(frozen=True)
class Stage:
    """An unfreeze stage: ``modules`` train from optimizer update ``at_update`` (0-based) at
    ``lr_scale`` times their LR. ``index`` is the stage's place in ``trainer.unfreeze``."""

    index: int
    at_update: int
    modules: tuple[str, ...]
    lr_scale: float


def check_unfreeze(unfreeze: Sequence[Any], strategy: str) -> None:
    """``trainer.unfreeze`` beyond its declaration: each module in one stage, and a strategy that
    can follow gradients switched on during the run."""
    check_unfreeze_strategy(unfreeze, strategy)
    seen: dict[str, int] = {}
    for index, stage in enumerate(unfreeze):
        for module in stage["modules"]:
            if module in seen:
                raise ConfigError(f"trainer.unfreeze.{index}.modules",
                                  f"{module} is already in stage {seen[module]}: name each module in one stage")
            seen[module] = index


def check_unfreeze_strategy(unfreeze: Sequence[Any], strategy: str) -> None:
    """Unfreezing changes ``requires_grad`` during the run, which DDP (whose reducer is built from
    the parameters that require gradients when it wraps the model) and FSDP2 (whose flat shards
    do the same) cannot follow: refuse it there."""
    if unfreeze and strategy in ("ddp", "fsdp"):
        raise ConfigError(
            "trainer.unfreeze",
            f"gradual unfreezing is not supported with trainer.strategy={strategy} (its gradient reduction is fixed "
            "when the model is wrapped): train the stages as separate single-process runs chained with "
            "trainer.init_from, or set trainer.unfreeze=[]",
        )


def unfreeze_stages(unfreeze: Iterable[Mapping[str, Any]], *, first_update_at: Callable[[int], int]) -> list[Stage]:
    """``trainer.unfreeze`` with each stage's ``at`` (in ``schedule.interval`` units) as the first
    optimizer update at or past it (:meth:`trainer.plan.RunPlan.first_update_at`)."""
    stages = []
    for index, raw in enumerate(unfreeze):
        stage = defaults_of_record(STAGE, OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else dict(raw))
        at = first_update_at(stage["at"])
        stages.append(Stage(index, at, tuple(str(m) for m in stage["modules"]), float(stage["lr_scale"])))
    return stages


def frozen(group: Mapping[str, Any], update: int) -> bool:
    """Whether optimizer group ``group`` is still frozen at update ``update``."""
    return update < group.get("unfreeze_at", 0)


def freeze_until_due(param_groups: Iterable[dict], update: int) -> None:
    """Before update ``update``: every frozen group's LR at 0 and its parameters without
    gradients; a group whose stage has come trains (``requires_grad`` True again)."""
    for group in param_groups:
        if "unfreeze_at" not in group:
            continue
        still = frozen(group, update)
        if still:
            group["lr"] = 0.0
        for param in group.get("params", ()):  # lr.csv computes LRs on copies without parameters
            param.requires_grad_(not still)


def describe_stages(stages: Sequence[Stage], updates_per_epoch: int) -> str:
    """The unfreeze plan, printed at the start of a run."""
    lines = ["unfreeze stages (frozen until then: no gradient, no update, no weight decay, no optimizer state):",
             "  update 0: every module in no stage"]
    for stage in sorted(stages, key=lambda s: s.at_update):
        epoch = stage.at_update / updates_per_epoch
        lines.append(f"  update {stage.at_update} (epoch {epoch:g}): {', '.join(stage.modules)}"
                     f" at {stage.lr_scale:g}x LR")
    return "\n".join(lines)
