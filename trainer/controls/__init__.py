"""What watches a run and may act on it: one protocol, one module per control.

A control is a module of this package with

- ``KEYS``: the ``trainer.*`` keys it owns, each a :class:`~trainer.params.Param` (``ema_decay``)
  or a node of them (``grad_spike: {factor, window, action}``), with its YAML in
  ``conf/trainer/default.yaml``;
- ``build(cfg, parts) -> Control | None``: the control for this run, or None when its keys leave
  it off;
- optionally ``check(cfg, strategy)``: what its keys cannot do together with other keys or with
  the resolved ``trainer.strategy``, checked with every other key before anything runs.

The loop holds the list :func:`build_controls` makes and calls each hook at its place; a new
control is a new module, its YAML key and its tests. Every hook does nothing unless a control
overrides it. Hooks on the device (:meth:`Control.veto`, :meth:`Control.after_step`) never read a
tensor on the host: the loop reads device values only every ``logger.read_every_n_steps``
updates (:meth:`Control.on_read`), and a control that must act at once on each logged update
says so (:attr:`Control.acts_on_each_log`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch import nn

    from trainer.data import Dataset
    from trainer.distributed import World
    from trainer.schedules import Schedule


@dataclass(frozen=True)
class Parts:
    """What a control may watch or act on, handed to each control's ``build``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    device: torch.device
    world: World
    #: fp16's dynamic loss scale skips overflowing updates routinely; only a non-finite loss counts as bad.
    scales_loss: bool = False
    dataset: Dataset | None = None  # the run's data (data.on_error=skip counts what it leaves out)


@dataclass(frozen=True)
class Update:
    """What one optimizer update did, as device tensors (reading one would sync the device)."""

    loss: torch.Tensor  # the update's mean loss
    grad_norm: torch.Tensor  # the total gradient norm before clipping
    finite: torch.Tensor  # whether the gradients were finite
    applied: torch.Tensor | bool  # whether the optimizer stepped (finite, and no control vetoed it)


@dataclass(frozen=True)
class Read:
    """The loop has read the logged updates' device values (one host-device sync)."""

    updates_done: int
    records: Sequence[Mapping[str, float]]  # each logged update read now, oldest first: train/lr, train/loss, ...
    run_dir: Path
    last_checkpoint: int | None  # updates done at the run directory's last.pt; None before the first
    write: Callable[[str], None]  # a line on the console (rank 0's), beside the progress bar


@dataclass(frozen=True)
class Stop:
    """A control's decision to end the run now; the loop writes a checkpoint of this update first.

    ``error`` is raised after the checkpoint (its status and exit code: :mod:`trainer.errors`);
    without one the run ends as planned with ``status``, and ``message`` is printed.
    ``keep_last_as``: a name the run directory's ``last.pt`` keeps before it is replaced (the last
    checkpoint before something went wrong).
    """

    message: str
    status: str = "completed"
    error: Exception | None = None
    keep_last_as: str | None = None


class Control:
    """The hooks the loop calls, in the order it calls them within an update."""

    #: Its entry in the checkpoint's ``controls``.
    name: ClassVar[str]
    #: Its place among the controls: lower first (its stop wins when two stop at one read).
    order: ClassVar[int] = 50
    #: Log (and so read) every update, whatever ``logger.log_every_n_steps`` says.
    logs_every_update: bool = False
    #: Read the device values after every logged update, not every ``logger.read_every_n_steps``.
    acts_on_each_log: bool = False

    def veto(self, grad_norm: torch.Tensor) -> torch.Tensor | None:
        """After clipping, before the optimizer steps: a device bool that skips this update, or None."""
        return None

    def after_step(self, update: Update) -> None:
        """After the optimizer stepped (or skipped), on the device."""

    def counters(self) -> dict[str, torch.Tensor]:
        """Running counts (device scalars, the same on every rank) logged with each logged update: tag -> count."""
        return {}

    def on_read(self, read: Read) -> Stop | None:
        """The loop read the logged values; before a checkpoint it reads even when none are pending."""
        return None

    def around_validation(self, validate: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Run ``validate`` (it scores the model as it is); a control may score other weights too."""
        return validate()

    def after_validation(self, metrics: Mapping[str, float], updates_done: int, *, last: bool) -> Stop | None:
        """The validation's metrics (empty without a validation split), taken after ``updates_done``
        updates; ``last``: the run ends after this one anyway."""
        return None

    def ended(self) -> Stop | None:
        """The stop this control made before its checkpoint, so a resumed run that had ended trains nothing."""
        return None

    def final_metrics(self) -> dict[str, float]:
        """What it adds to the run's final metrics (``metrics.json``)."""
        return {}

    def finish(self, run_dir: Path, metrics: dict[str, float], write: Callable[[str], None]) -> None:
        """After the last update, on rank 0: write its files, add to ``metrics``, ``write`` a console line."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Its state from a checkpoint; None when the checkpoint's run did not have this control."""


def control_modules() -> list[ModuleType]:
    """Every control module of this package (those with a ``build``), in name order."""
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    return [module for module in modules if hasattr(module, "build")]


def control_keys() -> dict[str, Any]:
    """``trainer.*`` keys the controls own: key -> a Param, or a node's dict of Params."""
    return {key: param for module in control_modules() for key, param in module.KEYS.items()}


def check_controls(cfg: DictConfig, strategy: str) -> None:
    """Each control's own checks of its keys against the rest of the config."""
    for module in control_modules():
        if hasattr(module, "check"):
            module.check(cfg, strategy)


class Controls(Sequence[Control]):
    """The run's controls, in order, with the hooks that combine what they say."""

    def __init__(self, controls: Sequence[Control]) -> None:
        self._controls = sorted(controls, key=lambda control: control.order)

    @classmethod
    def build(cls, cfg: DictConfig, parts: Parts) -> Controls:
        built = (module.build(cfg, parts) for module in control_modules())
        return cls([control for control in built if control is not None])

    def __getitem__(self, index: int) -> Control:  # type: ignore[override]
        return self._controls[index]

    def __len__(self) -> int:
        return len(self._controls)

    def __iter__(self) -> Iterator[Control]:
        return iter(self._controls)

    def veto(self, grad_norm: torch.Tensor) -> torch.Tensor | None:
        vetoes = [v for v in (control.veto(grad_norm) for control in self._controls) if v is not None]
        if not vetoes:
            return None
        veto = vetoes[0]
        for other in vetoes[1:]:
            veto = veto | other
        return veto

    def after_step(self, update: Update) -> None:
        for control in self._controls:
            control.after_step(update)

    def counters(self) -> dict[str, torch.Tensor]:
        return {tag: count for control in self._controls for tag, count in control.counters().items()}

    def on_read(self, read: Read) -> Stop | None:
        return _first(control.on_read(read) for control in self._controls)

    def validate(self, validate: Callable[[], dict[str, float]]) -> dict[str, float]:
        for control in self._controls:
            validate = _around(control, validate)
        return validate()

    def after_validation(self, metrics: Mapping[str, float], updates_done: int, *, last: bool) -> Stop | None:
        return _first(control.after_validation(metrics, updates_done, last=last) for control in self._controls)

    def ended(self) -> Stop | None:
        return _first(control.ended() for control in self._controls)

    @property
    def logs_every_update(self) -> bool:
        return any(control.logs_every_update for control in self._controls)

    @property
    def acts_on_each_log(self) -> bool:
        return any(control.acts_on_each_log or control.logs_every_update for control in self._controls)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {control.name: control.state_dict() for control in self._controls}

    def load_state_dict(self, states: Mapping[str, dict[str, Any]]) -> None:
        """Each control's saved state, or None for one the checkpoint's run did not have."""
        for control in self._controls:
            control.load_state_dict(states.get(control.name))


def _first(stops: Iterator[Stop | None]) -> Stop | None:
    """The first control's stop: every control still sees the hook (a counter must move on)."""
    found = [stop for stop in stops if stop is not None]
    return found[0] if found else None


def _around(control: Control, validate: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    return lambda: control.around_validation(validate)
