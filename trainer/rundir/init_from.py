"""``trainer.init_from``: a fine-tune's starting weights.

It loads model weights only (a ``last.pt``/``best.pt`` of ours, verified like a resume, or a file
holding a plain ``state_dict``); the optimizer and the schedule start afresh at update 0.
``trainer.resume`` continues a run instead; with ``resume=auto`` the two combine: a requeued
fine-tuning job resumes its own ``last.pt``, and only a first start reads ``init_from``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from trainer.errors import ConfigError
from trainer.params import Param
from trainer.rundir.checkpoint import is_checkpoint, read_file, verified

KEY = "trainer.init_from"
#: ``trainer.*`` keys of a fine-tune's starting weights (conf/trainer/default.yaml).
PARAMS: dict[str, Param] = {
    "init_from": Param(None, "model weights to start from: a last.pt/best.pt of ours or a torch.save'd state_dict",
                       str, extra=(None,)),
    "init_strict": Param(True, "init_from must fit the model exactly; false: load what fits, print the rest", bool),
}


def check_init_from(trainer: DictConfig) -> None:
    """``init_from`` starts a new run; ``resume`` (but ``auto``) continues one: not both."""
    if trainer.init_from is not None and trainer.resume not in (None, "auto"):
        raise ConfigError(
            KEY,
            f"trainer.resume={trainer.resume} continues that run, weights and optimizer; init_from starts a new one "
            "from weights only: set one of them to null (resume=auto with init_from resumes a requeued fine-tune)",
        )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights in ``path``: a checkpoint of ours (its checksum verified) or a plain
    ``state_dict`` (names to tensors) saved with ``torch.save``; read once, with ``weights_only=True``."""
    if not path.is_file():
        raise ConfigError(KEY, f"no file at {path}")
    state = read_file(path, KEY)
    if is_checkpoint(state):
        return finite(verified(state, path, KEY)["model"], path)
    if isinstance(state, dict) and state and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        return finite(state, path)
    raise ConfigError(KEY, f"{path} holds neither a checkpoint of ours nor a state_dict (parameter names -> tensors)")


def finite(weights: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``weights``, refused when a floating-point tensor holds a NaN or inf: every update from them
    would be skipped as non-finite, and the run would end "completed" having trained nothing."""
    bad = [name for name, tensor in weights.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ConfigError(KEY, f"{path} holds non-finite values (NaN or inf) in {', '.join(bad[:3])}"
                               f"{' and more' if len(bad) > 3 else ''}: start from weights saved before the run diverged")
    return weights


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
        raise ConfigError(KEY, mismatch_line(path, fit))
    load(model, {**model_state, **fit.loadable})
    return None if strict else fit_table(path, fit)
