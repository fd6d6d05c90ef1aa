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

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.errors import ConfigError
from trainer.params import Param
from trainer.rundir.resume import resume_path
from trainer.schedules.curve import read_lr_csv

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


def start_checkpoint(trainer: DictConfig, run_dir: Path) -> tuple[Path | None, bool]:
    """The checkpoint this run starts from, and whether it branches: the run directory's own
    ``last.pt`` first (``trainer.resume=auto``: a stopped branch resumes itself), else
    ``trainer.branch_from``, which must lie outside this run's directory."""
    path = resume_path(trainer.resume, run_dir)
    if path is not None or trainer.branch_from is None:
        return path, False
    source = Path(trainer.branch_from).expanduser()
    if source.resolve().parent == run_dir.resolve():
        raise ConfigError(KEY, f"{source} is this run's own directory: a branch needs a directory of its own "
                               "(hydra.run.dir=...), or its parent's files would be overwritten")
    return source, True


def check_same_branch(branch_from: str | None, kept: dict[str, Any] | None, path: Path) -> None:
    """A resumed run with ``trainer.branch_from`` set must be a branch of that very checkpoint."""
    if branch_from is None:
        return
    parent = kept["checkpoint"] if kept else None
    if parent is None or Path(parent).resolve() != Path(branch_from).expanduser().resolve():
        what = f"a branch of {parent}" if parent else "no branch"
        raise ConfigError(KEY, f"{path} is {what}, not of {branch_from}: resume it with its own trainer.branch_from, "
                               "or branch into another directory")


def lineage(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Where a branch comes from: the parent's run directory and checkpoint, its update and checksum."""
    return {"parent": str(path.parent), "checkpoint": str(path), "update": int(checkpoint["update"]),
            "checksum": checkpoint.get("checksum")}


#: The schedule fingerprint's entries a branch keeps from its parent (besides every ``optimizer.*``
#: setting): the data position of update N and the parameter groups depend on them.
KEPT = ("updates_per_epoch", "global_batch_size", "batch_ramp", "group_lr_scales", "unfreeze")


def check_kept(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A branch changes its schedule only: not the optimizer, the global batch or the groups."""
    keys = sorted({str(k) for k in (*saved, *current) if k in KEPT or str(k).startswith("optimizer.")})
    changed = [k for k in keys if saved.get(k) != current.get(k)]
    if changed:
        what = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(KEY, f"{path} was trained with other settings ({what}); a branch changes its schedule only: "
                               "keep them, or start a new run (trainer.init_from) from its weights")


def parent_row(path: Path, update: int) -> dict[str, float] | None:
    """The ``lr/<group>`` values at ``update`` in the ``lr.csv`` beside checkpoint ``path``, if any."""
    table = path.parent / "lr.csv"
    if not table.is_file():
        return None
    try:
        row = next((row for row in read_lr_csv(table) if int(row["update"]) == update), None)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError("trainer.branch_lr_jump", f"{table} cannot be read ({type(error).__name__}): pass "
                                                    "trainer.branch_lr_jump=allow to branch without comparing") from None
    return None if row is None else {k: v for k, v in row.items() if k.startswith("lr/")}


def check_lr_continues(path: Path, update: int, row: dict[str, float], parent: dict[str, Any], policy: str) -> None:
    """Refuse a branch whose LRs at ``update`` (``row``: its ``lr.csv`` row) are not its parent's
    (``parent``: the parent's schedule fingerprint); ``policy`` ``allow`` accepts any."""
    if policy == "allow":
        return
    if parent.get("name") == "plateau" or any(p.get("name") == "plateau" for p in parent.get("phases") or ()):
        raise ConfigError("trainer.branch_lr_jump", "the parent's LR followed its validations (plateau), which its "
                                                    "lr.csv does not hold: check the LR at the branch point in its "
                                                    "logs, then pass trainer.branch_lr_jump=allow")
    old = parent_row(path, update)
    if old is None:
        raise ConfigError("trainer.branch_lr_jump", f"{path.parent} has no lr.csv row for update {update} to compare "
                                                    "the LR with: pass trainer.branch_lr_jump=allow to branch anyway")
    for column in (c for c in row if c.startswith("lr/") and c in old):
        if not math.isclose(row[column], old[column], rel_tol=1e-9, abs_tol=1e-15):
            raise ConfigError(
                "trainer.branch_lr_jump",
                f"the branch's LR at update {update} is {row[column]:.6g}, its parent's was {old[column]:.6g} "
                f"({column}): the LR would jump there. Start the new schedule's change at update {update} "
                f"(schedule=wsd: total_steps - decay_steps = {update}), or pass trainer.branch_lr_jump=allow",
            )
