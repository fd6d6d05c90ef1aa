"""Checkpoints: what one holds, when one is due, writing it and restoring it.

A checkpoint is a dict of named states, each from the part of the run that owns it (format
``trainer-checkpoint/2``):

| key | what | owner |
|---|---|---|
| ``update`` | optimizer updates done | the loop |
| ``model``, ``optimizer`` | full (unsharded) states; the optimizer's with its kind (a schedule-free one's model holds x, its state z and y) | the model, the optimizer |
| ``step`` | the precision and its GradScaler's loss scale; ``clock`` (a schedule or budget in seconds): the seconds of training and the t of this update; ``tokens`` (a schedule or budget in tokens of padded rows): the tokens trained before this update | :class:`~trainer.training.step.TrainStep` |
| ``schedule`` | ``fingerprint``: every setting that fixes the LR of an update | :mod:`trainer.rundir.resume` |
| ``data`` | ``epoch``, ``batch``, ``seed``: where the next update reads (derived from ``update``) | the plan |
| ``controls`` | ``{name: state}`` of every control (EMA, spike window, early stopping, plateau, ...) | :mod:`trainer.controls` |
| ``checkpoints`` | ``best``: the best objective so far (``best.pt``) | :class:`Checkpointer` |
| ``logs`` | ``val``: the ``val/*`` logged at this very update (a resume writes them again) | the logger |
| ``rng`` | Python's and torch's generators | the process |
| ``config`` | the resolved config the run was started with | the run |

It is saved with ``torch.save`` and read with ``weights_only=True`` (no pickled code runs on
load), and carries a SHA-256 digest of its own contents, checked on load, so a flipped byte in a
tensor is an error rather than a quietly different model. :class:`Checkpointer` alone writes and
restores this layout.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainer.distributed import World
from trainer.errors import ConfigError, NoSpace, format_bytes, one_line
from trainer.monitor import beats
from trainer.optim.factory import load_optimizer_state, optimizer_state
from trainer.optim.groups import trainable_parameters
from trainer.optim.schedule_free import is_schedule_free
from trainer.rundir.atomic import link_atomic, save_atomic, state_digest, tensor_bytes

FORMAT = "trainer-checkpoint/2"
#: The named states every checkpoint holds (its ``checksum`` besides).
LAYOUT_KEYS = ("format", "update", "model", "optimizer", "step", "schedule", "data", "controls", "checkpoints", "logs",
               "rng", "config")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def rng_state() -> dict[str, Any]:
    """Python's and torch's generator states (every CUDA device's too, when present)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Contents:
    """The parts of a run whose states a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Stateful
    controls: Stateful
    world: World
    config: dict
    fingerprint: dict
    seed: int
    data_position: Callable[[int], tuple[int, int]]  # RunPlan.data_position: (epoch, micro-batches in it) at an update


class Checkpointer:
    """The run's checkpoints: ``last.pt`` every ``every_n_epochs`` epoch ends, every
    ``every_n_steps`` updates, on a stop and at the end; ``best.pt`` whenever the objective
    improves (it keeps the best value seen); ``keep_last_n`` numbered copies."""

    def __init__(
        self, run_dir: Path, contents: Contents, *, every_n_steps: int | None, every_n_epochs: int, keep_last_n: int,
    ) -> None:
        self.run_dir, self.contents = run_dir, contents
        self.every_n_steps, self.every_n_epochs, self.keep_last_n = every_n_steps, every_n_epochs, keep_last_n
        self.best = math.inf
        self.last_saved: int | None = None  # updates done at the run directory's last.pt, once there is one
        self._rng: dict[str, Any] | None = None  # a restored checkpoint's generators, until the loop starts

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    def due_after_update(self, updates_done: int) -> bool:
        return bool(self.every_n_steps) and updates_done % self.every_n_steps == 0

    def due_at_epoch_end(self, epoch: int, updates_done: int) -> bool:
        return (epoch + 1) % self.every_n_epochs == 0 or self.due_after_update(updates_done)

    def improves(self, objective: float) -> bool:
        """Take a validation's objective (minimised); True when it beats every earlier one."""
        improved = beats(objective, self.best, "min")
        if improved:
            self.best = objective
        return improved

    def state(self, update: int, *, val_metrics: dict[str, float]) -> dict[str, Any]:
        """The checkpoint of this moment, after ``update`` updates (every rank: FSDP2 gathers its shards)."""
        c = self.contents
        return {
            "format": FORMAT,
            "update": update,
            "model": c.world.model_state(c.model),
            "optimizer": c.world.full_optimizer_state(optimizer_state(c.optimizer)),
            "step": c.step.state_dict(),
            "schedule": {"fingerprint": c.fingerprint},
            "data": dict(zip(("epoch", "batch"), c.data_position(update)), seed=c.seed),
            "controls": c.controls.state_dict(),
            "checkpoints": {"best": self.best},
            "logs": {"val": val_metrics},
            "rng": rng_state(),
            "config": c.config,
        }

    def save(
        self, update: int, *, val_metrics: dict[str, float], improved: bool = False, keep_last_as: str | None = None,
    ) -> None:
        """Rank 0 writes the checkpoint of update ``update``; every rank gathers its state and waits
        for the file, so no rank runs, or exits, ahead of it. ``keep_last_as``: the name the
        current ``last.pt`` keeps (it is not replaced under it)."""
        state = self.state(update, val_metrics=val_metrics)
        world = self.contents.world
        if world.is_main:
            if keep_last_as is not None and self.last_saved is not None:
                link_atomic(self.last, self.run_dir / keep_last_as)
            self.write(state, update, improved=improved)
        world.barrier()
        self.last_saved = update

    def write(self, state: dict, update: int, *, improved: bool = False) -> None:
        """``last.pt`` and, as hard links to the same bytes, ``best.pt`` and the numbered copy:
        all in place before ``last.pt`` is replaced (:func:`~trainer.rundir.atomic.save_atomic`)."""
        also = [self.run_dir / "best.pt"] if improved else []
        if self.keep_last_n > 0:
            also.append(self.run_dir / f"step-{update:08d}.pt")
        save_atomic(state, self.last, also=also)
        if self.keep_last_n > 0:
            prune_numbered(self.run_dir, self.keep_last_n)

    def restore(self, checkpoint: dict[str, Any], path: Path, key: str = "trainer.resume") -> int:
        """Load every state of ``checkpoint`` (read from ``path``) into this run; returns the updates
        it had done. One that does not fit this run (another model, optimizer or group layout) is a
        ConfigError, raised before anything is written."""
        c = self.contents
        try:
            c.world.load_model_state(c.model, checkpoint["model"])
            load_optimizer_state(
                c.optimizer, c.world.shard_optimizer_state(checkpoint["optimizer"], trainable_parameters(c.optimizer))
            )
            c.step.load_state_dict(checkpoint["step"])
            # After the model: a control the checkpoint's run lacked starts from the restored weights.
            c.controls.load_state_dict(checkpoint["controls"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ConfigError(key, f"{path} does not fit this run: {one_line(error)}") from None
        self.best = checkpoint["checkpoints"]["best"]
        # Only this directory's own last.pt is "the last checkpoint" a stop may keep as last_good.pt:
        # a run resumed from another file (last_good.pt itself, another run's) has none yet.
        self.last_saved = checkpoint["update"] if path.resolve() == self.last.resolve() else None
        self._rng = checkpoint["rng"]
        return checkpoint["update"]

    def resume_rng(self) -> None:
        """Put back the restored checkpoint's generators, as the loop starts: nothing that runs
        between the restore and the first update (the writers, the data's files) may shift them."""
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None


def expected_checkpoint_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict[str, Any] | None, *, controls: Any = None,
) -> int:
    """About how large this run's checkpoints will be: the model, the optimizer state (a resumed
    checkpoint's own, else what the first step makes: Adam's two moments, SGD's momentum) and the
    controls' states (the weight EMA's copy of the model)."""
    if checkpoint is not None:
        optimizer_bytes = tensor_bytes(checkpoint["optimizer"])
    else:
        defaults = optimizer.defaults
        slots = 2 + bool(defaults.get("amsgrad")) if "betas" in defaults else int(bool(defaults.get("momentum")))
        slots += is_schedule_free(optimizer)  # the y it keeps while a checkpoint is written at x
        optimizer_bytes = tensor_bytes(model.state_dict()) * slots
    controls_bytes = tensor_bytes(controls.state_dict()) if controls is not None else 0
    return tensor_bytes(model.state_dict()) + optimizer_bytes + controls_bytes


def check_free_space(run_dir: Path, checkpoint_bytes: int, *, keep_last_n: int) -> None:
    """Before training: raise NoSpace unless ``run_dir``'s disk has room for the checkpoints the
    run keeps at once (``last.pt``, ``best.pt``, ``keep_last_n`` numbered copies, the newest of
    which is ``last.pt``'s own file) and the one being written, less the files already there."""
    at_once = max(keep_last_n, 1) + 2
    held = len({path.stat().st_ino for path in run_dir.glob("*.pt") if path.is_file()})
    needed = checkpoint_bytes * max(1, at_once - held)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise NoSpace(run_dir, needed=needed, free=free, what=f"the checkpoints this run keeps ({format_bytes(checkpoint_bytes)} each)")


def not_ours(path: Path, error: Exception, key: str = "trainer.resume") -> ConfigError:
    """Why torch refused ``path``, without torch's advice to retry with ``weights_only=False``
    (that would run whatever code the file holds)."""
    blocked = re.search(r"GLOBAL (\S+)", str(error))
    if blocked:
        why = f"it asks to load {blocked.group(1)}, and a checkpoint holds only tensors and plain data"
    else:
        why = "it is damaged, truncated or another program's file"
    return ConfigError(key, f"{path} is not a checkpoint of ours: {why}")


def read_file(path: Path, key: str) -> Any:
    """What ``torch.save`` put in ``path``, read with ``weights_only=True``; a file torch cannot
    read that way is a ConfigError naming ``key``."""
    if path.exists() and not path.is_file():
        raise ConfigError(key, f"{path} is not a file: move it away to start afresh, or point {key} at a checkpoint")
    if not path.is_file():
        raise ConfigError(key, f"no checkpoint at {path}" if key == "trainer.resume" else f"no file at {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip errors, unpickling refusals, short reads: all mean "not ours"
        raise not_ours(path, error, key) from None


def is_checkpoint(state: Any) -> bool:
    """Whether what a file held is a checkpoint of ours, of any format."""
    return isinstance(state, dict) and str(state.get("format", "")).startswith("trainer-checkpoint/")


def verified(state: Any, path: Path, key: str) -> dict[str, Any]:
    """``state`` (read from ``path``) if it is a whole, undamaged checkpoint of this format;
    otherwise a ConfigError naming ``key``."""
    if not is_checkpoint(state):
        raise ConfigError(key, f"{path} is not a trainer checkpoint (expected format {FORMAT})")
    if state["format"] != FORMAT:
        raise ConfigError(key, f"{path} is a {state['format']} checkpoint, written before this version's "
                               f"{FORMAT}: start a new run, or use the trainer version that wrote it")
    missing = [name for name in LAYOUT_KEYS if name not in state]
    if missing:
        raise ConfigError(key, f"{path} lacks {', '.join(missing)}: it is incomplete")
    if state.get("checksum") != state_digest(state):
        raise ConfigError(key, f"{path} is damaged: its contents do not match the checksum written with them; "
                               "resume from another checkpoint (best.pt, step-*.pt)")
    update = state["update"]
    if type(update) is not int or update < 0:
        raise ConfigError(key, f"{path} has a forged or broken header: update={update!r} is not a count of updates")
    return state


def load_checkpoint(path: Path, key: str = "trainer.resume") -> dict[str, Any]:
    """Read and verify a checkpoint; any unreadable, damaged, truncated, foreign or older-format
    file is a ConfigError naming ``key`` (the setting that pointed at it)."""
    return verified(read_file(path, key), path, key)


def prune_numbered(run_dir: Path, keep: int) -> None:
    """Keep only the ``keep`` newest ``step-*.pt`` checkpoints in ``run_dir``."""
    numbered = sorted(run_dir.glob("step-*.pt"))
    for old in numbered[: max(len(numbered) - keep, 0)]:
        old.unlink()
