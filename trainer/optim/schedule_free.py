"""Schedule-free optimizers (Defazio et al. 2024, the optional ``schedulefree`` package).

They keep two points: y, where gradients are taken (the parameters in train mode), and x, the
average of the iterates z that is meant to be evaluated (the parameters in eval mode);
``optimizer.train()`` and ``optimizer.eval()`` move the parameters between them. The trainer
trains at y and validates, averages (the weight EMA) and checkpoints at x (see
:func:`trainer.training.evaluate.at_eval_weights`); a checkpoint's optimizer state also holds y,
so a resumed run continues exactly.

Their LR is meant to stay constant: the method has its own linear warmup
(``optimizer.warmup_steps``, counted in optimizer steps) and weighs each iterate in the average
by the LR it ran at, so a decaying schedule on top of it is refused unless
``optimizer.allow_schedule=true`` asks for it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from trainer.errors import ConfigError, require
from trainer.params import Param
from trainer.plan import warms_up

if TYPE_CHECKING:  # torch is imported where it runs: the schedules' package face (and so --help) goes without it
    import torch

PACKAGE = "schedulefree"
INSTALL = "pip install 'trainer[schedulefree]'"

#: ``optimizer.*`` keys of a schedule-free optimizer that the trainer reads (not passed to the class).
KEYS: dict[str, Param] = {
    "allow_schedule": Param(False, "let a schedule other than constant, or a schedule warmup, scale the LR the "
                                   "method expects to be constant (its own warmup is optimizer.warmup_steps)", bool),
    "bn_batches": Param(8, "training micro-batches (of the epoch being validated, from its first) that recompute "
                           "BatchNorm statistics at x before each validation; 0 = keep the running ones", int, low=0),
}

#: The method's own keyword arguments, shared by its AdamW and SGD.
METHOD: dict[str, Param] = {
    "warmup_steps": Param(0, "the method's linear warmup: optimizer step k (0-based) runs at lr·min(1, (k+1)/W)",
                          int, low=0),
    "r": Param(0.0, "polynomial weighting of iterate k+1 in the average x: (k+1)^r", float, low=0),
    "weight_lr_power": Param(2.0, "each iterate's weight in x is also (its LR so far at most)^weight_lr_power", float,
                             low=0),
}

#: Group entries that are the method's running state, not settings: a resume takes them from the
#: checkpoint (``k`` counts steps, ``weight_sum`` and ``lr_max`` weigh the average, ``train_mode``
#: says whether the saved parameters are y or x).
GROUP_STATE = ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode")


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` switches its parameters between y and x with ``train()``/``eval()``."""
    return "train_mode" in optimizer.param_groups[0] and callable(getattr(optimizer, "eval", None))


def names_schedule_free(optimizer: DictConfig) -> bool:
    """Whether ``optimizer._target_`` is one of the ``schedulefree`` package's classes."""
    return str(optimizer.get("_target_", "")).startswith(f"{PACKAGE}.")


def check_installed(optimizer: DictConfig) -> None:
    """ConfigError naming the extra to install when the config names ``schedulefree`` and it is missing."""
    require(
        not names_schedule_free(optimizer) or importlib.util.find_spec(PACKAGE) is not None, "optimizer._target_",
        f"{optimizer._target_} needs the schedulefree package: {INSTALL}",
    )


def check_schedule(optimizer: DictConfig, schedule: DictConfig) -> None:
    """A schedule-free optimizer runs at ``schedule=constant`` without a schedule warmup, unless
    ``optimizer.allow_schedule=true``: one ConfigError naming the key otherwise."""
    if not names_schedule_free(optimizer) or optimizer.get("allow_schedule", False):
        return
    plus = "" if "allow_schedule" in optimizer else "+"  # optimizer=target has no such key yet
    if schedule.name != "constant" or warms_up(schedule):
        what = f"schedule={schedule.name}" if schedule.name != "constant" else "a schedule warmup"
        raise ConfigError(
            "optimizer.allow_schedule",
            f"{optimizer._target_} is schedule-free and expects a constant LR, but {what} would scale it: use "
            "schedule=constant schedule.warmup_steps=0 (its own warmup is optimizer.warmup_steps), or "
            f"{plus}optimizer.allow_schedule=true to apply the schedule anyway",
        )
    for index, rule in enumerate(optimizer.get("param_groups") or ()):  # a group's own schedule, likewise
        own = rule.get("schedule")
        own = {"name": own} if isinstance(own, str) else own
        # A constant without a warmup of its own takes the run's: none, as checked above.
        if own is None or own.get("name") == "constant" and not own.get("warmup_steps") and own.get("warmup_ratio") is None:
            continue
        raise ConfigError(
            f"optimizer.param_groups.{index}.schedule",
            f"{optimizer._target_} is schedule-free and expects a constant LR, but this group's own schedule would "
            f"scale it: use schedule: constant, or {plus}optimizer.allow_schedule=true to apply it anyway",
        )


def own_warmup(group: dict, steps_done: int | None = None) -> float:
    """The factor the method's warmup puts on ``group['lr']`` at its next step, after
    ``steps_done`` steps (None: the group's own count ``k``); 1 for other optimizers."""
    warmup = group.get("warmup_steps", 0) if "train_mode" in group else 0
    if not warmup:
        return 1.0
    return min(1.0, ((group["k"] if steps_done is None else steps_done) + 1) / warmup)


def _beta(group: dict) -> float:
    """The interpolation constant between y and z: AdamW's beta1, SGD's momentum."""
    return group["betas"][0] if "betas" in group else group["momentum"]


def eval_point(optimizer: torch.optim.Optimizer, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """x for each of ``tensors`` (new tensors, the parameters untouched) from a schedule-free
    optimizer in train mode: ``x = y + (1 - 1/beta)(z - y)``, as its ``eval()`` computes it in
    place; a tensor it does not train, or has not stepped yet (x = y), is given back as it is.
    Call it without autograd (the EMA's update runs under ``torch.no_grad``)."""
    import torch

    weights = {p: 1 - 1 / _beta(group) for group in optimizer.param_groups for p in group["params"]}
    state = optimizer.state
    return [torch.lerp(t, state[t]["z"], weights[t]) if t in weights and "z" in state.get(t, {}) else t
            for t in tensors]
