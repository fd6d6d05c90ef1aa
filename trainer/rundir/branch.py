"""``trainer.branch_from``: a new run that continues another run's checkpoint under a new schedule,
e.g. a WSD cooldown of length L branched from update N of a running job (Hägele et al. 2024).

The branch starts in its own run directory with everything the checkpoint holds (model, optimizer
moments, data position, generators, the update count N), as a resume would, except that its
schedule may differ: that is the point. Any other change of what an update computes is refused as a
resume refuses it (``trainer.resume_accept``). Its lineage (the parent's checkpoint, N and the
checkpoint's checksum) goes into ``config.yaml`` and ``metrics.json``. A branch whose LR at N is not
the parent's (read from the parent's ``lr.csv``) would jump there: refused, unless
``trainer.branch_lr_jump=allow``. A branch that was stopped resumes its own ``last.pt``
(``trainer.resume=auto``) and keeps its lineage.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.errors import ConfigError
from trainer.params import Param

KEY = "trainer.branch_from"

#: ``trainer.branch_from`` and ``trainer.branch_lr_jump`` (conf/trainer/default.yaml).
PARAMS = {
    "branch_from": Param(None, "a checkpoint of another run (RUN/step-N.pt) to continue with this run's schedule, "
                         "in this run's directory", str, extra=(None,)),
    "branch_lr_jump": Param("refuse", "a branch whose LR at its first update is not its parent's: refuse, or allow",
                            str, choices=("refuse", "allow")),
}


def check_branch(trainer: DictConfig) -> None:
    """A branch starts a run from another's checkpoint; ``resume`` (but ``auto``) and ``init_from`` do too."""
    if trainer.branch_from is None:
        return
    for key in ("resume", "init_from"):
        value = trainer[key]
        if value is not None and value != "auto":
            raise ConfigError(KEY, f"trainer.{key}={value} starts this run from elsewhere too: set one of them to null "
                                   "(resume=auto with branch_from resumes a stopped branch)")


def lineage(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Where a branch comes from: the parent's run directory and checkpoint, its update and checksum."""
    return {"parent": str(path.parent), "checkpoint": str(path), "update": int(checkpoint["update"]),
            "checksum": checkpoint.get("checksum")}


def parent_lr(path: Path, update: int) -> float | None:
    """The first group's LR at ``update`` in the ``lr.csv`` beside checkpoint ``path``, if there is one."""
    table = path.parent / "lr.csv"
    if not table.is_file():
        return None
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            if int(float(row["update"])) == update:
                return float(next(value for key, value in row.items() if key.startswith("lr/")))
    return None


def check_lr_continues(path: Path, update: int, lr: float, policy: str) -> None:
    """Refuse a branch whose LR ``lr`` at ``update`` is not its parent's (``policy`` ``allow`` accepts it)."""
    if policy == "allow":
        return
    old = parent_lr(path, update)
    if old is None:
        raise ConfigError("trainer.branch_lr_jump", f"{path.parent} has no lr.csv row for update {update} to compare "
                                                    "the LR with: pass trainer.branch_lr_jump=allow to branch anyway")
    if not math.isclose(lr, old, rel_tol=1e-9, abs_tol=1e-15):
        raise ConfigError(
            "trainer.branch_lr_jump",
            f"the branch's LR at update {update} is {lr:.6g}, its parent's was {old:.6g}: the LR would jump there. "
            f"Start the new schedule's change at update {update} (schedule=wsd: total_steps - decay_steps = {update}), "
            "or pass trainer.branch_lr_jump=allow",
        )
