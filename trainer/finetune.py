"""Fine-tuning from weights: ``trainer.init_from`` and gradual unfreezing (``trainer.unfreeze``).

``init_from`` loads model weights only (a ``last.pt``/``best.pt`` of ours, verified like a resume,
or a file holding a plain ``state_dict``); the optimizer and the schedule start afresh at update
0. ``trainer.resume`` continues a run instead; with ``resume=auto`` the two combine: a requeued
fine-tuning job resumes its own ``last.pt``, and only a first start reads ``init_from``.

An unfreeze stage's parameters sit in groups of their own (:func:`trainer.optim.parameter_groups`
tags them with ``unfreeze_at``, in updates). Until that update they have ``requires_grad`` False,
so they get no gradient and the optimizer skips them entirely: no update, no weight decay, no
optimizer state; their groups' LR reads 0. Whether a group is frozen is a pure function of the
update count, so a resume recreates it exactly. BatchNorm running statistics of a frozen module
keep updating in training mode (as Lightning's ``BackboneFinetuning`` does by default).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.checkpoint import FORMAT, load_checkpoint, not_ours
from trainer.errors import ConfigError
from trainer.params import REQUIRED, Param, defaults_of_record

#: The keys of one ``trainer.unfreeze`` stage.
STAGE: dict[str, Param] = {
    "at": Param(REQUIRED, "the update (or epoch, with schedule.interval=epoch) the modules join at", int, low=0),
    "modules": Param(REQUIRED, "module names (e.g. layer4, blocks.5) frozen until then", list, item=str,
                     min_items=1),
    "lr_scale": Param(1.0, "their LR multiplier once they train", float, low=0, low_open=True),
}

#: ``trainer.*`` keys of fine-tuning (conf/trainer/default.yaml).
FINETUNE: dict[str, Param] = {
    "init_from": Param(None, "model weights to start from: a last.pt/best.pt of ours or a torch.save'd state_dict",
                       str, extra=(None,)),
    "init_strict": Param(True, "init_from must fit the model exactly; false: load what fits, print the rest", bool),
    "unfreeze": Param([], "stages {at, modules, lr_scale}: the modules stay frozen until update (or epoch) at",
                      list, item=dict, fields=STAGE),
}


@dataclass(frozen=True)
class Stage:
    """An unfreeze stage: ``modules`` train from optimizer update ``at_update`` (0-based) at
    ``lr_scale`` times their LR. ``index`` is the stage's place in ``trainer.unfreeze``."""

    index: int
    at_update: int
    modules: tuple[str, ...]
    lr_scale: float


def check_finetune(t: DictConfig) -> None:
    """Static checks of ``trainer.init_from`` and ``trainer.unfreeze`` (their declarations are
    checked with the other trainer keys)."""
    if t.init_from is not None and t.resume not in (None, "auto"):
        raise ConfigError(
            "trainer.init_from",
            f"trainer.resume={t.resume} continues that run, weights and optimizer; init_from starts a new one from "
            "weights only: set one of them to null (resume=auto with init_from resumes a requeued fine-tune)",
        )
    seen: dict[str, int] = {}
    for index, stage in enumerate(t.unfreeze):
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


def unfreeze_stages(unfreeze: Iterable[Mapping[str, Any]], *, interval: str, updates_per_epoch: int) -> list[Stage]:
    """``trainer.unfreeze`` with each stage's ``at`` in optimizer updates (an epoch's first update
    when ``interval`` is ``epoch``)."""
    stages = []
    for index, raw in enumerate(unfreeze):
        stage = defaults_of_record(STAGE, OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else dict(raw))
        at = stage["at"] * (updates_per_epoch if interval == "epoch" else 1)
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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights in ``path``: a checkpoint of ours (its checksum verified) or a plain
    ``state_dict`` (names to tensors) saved with ``torch.save``; read with ``weights_only=True``."""
    if not path.is_file():
        raise ConfigError("trainer.init_from", f"no file at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise not_ours(path, error, "trainer.init_from") from None
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return load_checkpoint(path, key="trainer.init_from")["model"]
    if isinstance(state, dict) and state and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        return state
    raise ConfigError("trainer.init_from", f"{path} holds neither a checkpoint of ours nor a state_dict "
                                           "(parameter names -> tensors)")


@dataclass(frozen=True)
class WeightsFit:
    """How a file's weights fit a model: what loads, and the keys that do not."""

    loadable: dict[str, torch.Tensor]
    missing: list[tuple[str, tuple[int, ...]]]  # the model's (name, shape), absent from the file
    unexpected: list[tuple[str, tuple[int, ...]]]  # the file's (name, shape), absent from the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (name, file's shape, model's shape)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def fit_weights(weights: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> WeightsFit:
    """Compare a file's ``weights`` with the model's ``state_dict`` (parameters and buffers)."""
    loadable, mismatched = {}, []
    for name, tensor in weights.items():
        if name in model_state:
            if tuple(tensor.shape) == tuple(model_state[name].shape):
                loadable[name] = tensor
            else:
                mismatched.append((name, tuple(tensor.shape), tuple(model_state[name].shape)))
    missing = [(name, tuple(tensor.shape)) for name, tensor in model_state.items() if name not in weights]
    unexpected = [(name, tuple(tensor.shape)) for name, tensor in weights.items() if name not in model_state]
    return WeightsFit(loadable, missing, unexpected, mismatched)


def _names(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def mismatch_line(path: Path, fit: WeightsFit) -> str:
    """The one-line error for a strict load that does not fit."""
    parts = []
    if fit.missing:
        parts.append(f"{len(fit.missing)} missing ({_names([name for name, _ in fit.missing])})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected ({_names([name for name, _ in fit.unexpected])})")
    if fit.mismatched:
        shown = [f"{name} {list(saved)} vs {list(ours)}" for name, saved, ours in fit.mismatched]
        parts.append(f"{len(fit.mismatched)} of another shape ({_names(shown)})")
    return (f"{path} does not fit the model: {'; '.join(parts)}; set trainer.init_strict=false to load what fits "
            "(e.g. all but a new classifier head)")


def fit_table(path: Path, fit: WeightsFit) -> str:
    """The keys a non-strict load left out, one row each, under a line of what was loaded."""
    rows = [(name, "missing", "-", str(list(shape))) for name, shape in fit.missing]
    rows += [(name, "unexpected", str(list(shape)), "-") for name, shape in fit.unexpected]
    rows += [(name, "shape mismatch", str(list(saved)), str(list(ours))) for name, saved, ours in fit.mismatched]
    total = len(fit.loadable) + len(fit.missing) + len(fit.mismatched)
    lines = [f"init_from {path}: loaded {len(fit.loadable)} of the model's {total} tensors; not loaded:"]
    if rows:
        header = ("key", "status", "file's shape", "model's shape")
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    else:
        lines[0] = lines[0].replace("; not loaded:", "")
    return "\n".join(lines)


def init_weights(model: nn.Module, path: Path, *, strict: bool, model_state: Mapping[str, torch.Tensor],
                 load: Any) -> str | None:
    """Load ``path``'s weights into ``model``; returns the table of keys left out (``strict=False``)
    or None. ``model_state`` is the model's full state and ``load(model, state)`` loads one (both
    from :class:`trainer.distributed.World`, which gathers and shards under FSDP2). A strict
    mismatch is a ConfigError, before anything is trained or written."""
    fit = fit_weights(read_weights(path), model_state)
    if strict and not fit.exact:
        raise ConfigError("trainer.init_from", mismatch_line(path, fit))
    load(model, {**model_state, **fit.loadable})
    return None if strict else fit_table(path, fit)
