"""A schedule bound to a run (:class:`Schedule`) and how it is applied to an optimizer.

:func:`apply_schedule` is the one place that writes LRs (scheduled weight decay and momentum too)
into the optimizer's groups; training, the preview and ``lr.csv`` all go through it, so the LR that
is logged is the LR that was applied."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainer.optim.schedule_free import own_warmup
from trainer.optim.unfreeze import freeze_until_due
from trainer.plan import first_update_at
from trainer.schedules.plateau import ReduceOnPlateau

if TYPE_CHECKING:  # applying a schedule needs only the optimizer's groups, not torch itself
    import torch

    from trainer.batch_ramp import BatchRamp


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, update: int) -> None:
    """Set every group's LR for optimizer update ``update``: its own schedule's
    (``optimizer.param_groups[].schedule``), else ``schedule``'s, times its ``lr_scale``; its weight
    decay where ``optimizer.weight_decay_schedule`` moves it; scheduled momentum / beta1; and which
    groups are frozen then (``trainer.unfreeze``: LR 0, no gradients). Under ``trainer.batch_ramp``
    every LR is also scaled by ``optimizer.lr_scaling``'s rule at this update's batch size."""
    momentum = schedule.momentum(update)
    batch = schedule.batch_factor(update)
    lrs: dict[int, float] = {}  # per schedule: groups that share one compute it once
    for group in optimizer.param_groups:
        own = schedule.of_group(group)
        if id(own) not in lrs:
            lrs[id(own)] = own.lr(update) * batch
        group["lr"] = lrs[id(own)] * group["lr_scale"]
        if momentum is not None:
            set_momentum(group, momentum)
        if schedule.scheduled_decay:
            group["weight_decay"] = group["base_weight_decay"] * schedule.decay_factor(own, update)
    freeze_until_due(optimizer.param_groups, update)


def applied_lrs(optimizer: torch.optim.Optimizer, steps_done: int | None = None) -> list[float]:
    """The LR each group will use in its next step, read from the optimizer itself: a schedule-free
    optimizer's group LR times its own warmup's factor after ``steps_done`` steps (None: as many
    as it has taken; the preview, which takes none, gives the update index)."""
    return [group["lr"] * own_warmup(group, steps_done) for group in optimizer.param_groups]


def applied_momentum(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


@dataclass
class Schedule:
    """A resolved schedule: everything needed to give the LR (and momentum) of any update.

    ``interval='epoch'`` maps update index u to epoch ``u // updates_per_epoch``, so the LR is
    constant within an epoch and changes exactly at epoch boundaries. ``sample`` and ``token`` map
    it to the examples or tokens trained on before it, ``u × units_per_update`` (the global batch,
    or its tokens): a pure function of u, as every batch of a run has the same size. Under a batch
    ramp (:mod:`trainer.batch_ramp`) they vary, and t is the examples (tokens) trained before u.
    ``time`` maps it to the seconds of training before it, which only the run's clock knows, and
    ``token`` over padded rows of several lengths to the tokens trained before it, which only the
    run's count knows: ``count(u)`` (a :class:`trainer.training.counts.RunningCount`'s stamps; the
    preview's estimate).

    A chain's ``phases`` are (name, first t) of each phase; its plateau, if any, counts only the
    validations from ``plateau_start`` (in t units) on.
    """

    name: str
    interval: str
    peak_lr: float
    total_steps: int
    warmup_steps: int
    updates_per_epoch: int
    lr_fn: Callable[[int], float]
    momentum_fn: Callable[[int], float] | None = None
    plateau: ReduceOnPlateau | None = None
    monitor: str | None = None
    lr_scale: float = 1.0
    phases: tuple[tuple[str, int], ...] = ()
    plateau_start: int = 0
    units_per_update: int = 1  # interval=sample|token: examples or tokens per optimizer update
    # Schedules named in optimizer.* (trainer.schedules.named), bound like this one:
    #: optimizer.param_groups rules' own schedules, by rule index (a group's ``schedule_rule``).
    group_schedules: Mapping[int, Schedule] = field(default_factory=dict)
    #: optimizer.weight_decay_schedule=lr: each group's λ follows the shape of its own LR schedule.
    decay_follows_lr: bool = False
    #: optimizer.weight_decay_schedule=NAME: every group's λ follows this schedule's shape.
    decay_shape: Schedule | None = None
    #: interval=time, or token over padded rows: the t of an update as the run measures it (None: t
    #: is a function of the update)
    count: Callable[[int], float] | None = None
    # trainer.batch_ramp: updates of several sizes, so t is the examples (tokens) trained before an
    # update, and apply_schedule scales its LR by optimizer.lr_scaling's rule at its size (None: no ramp)
    ramp: BatchRamp | None = None

    def counting(self, **count: Any) -> Schedule:
        """This schedule, and those bound beside it (the groups' own, the weight decay's), with t
        counted by ``count``: ``count=`` (``interval=time``: the training clock; ``token`` over padded
        rows: the token count; or the preview's estimate) or ``ramp=`` (a batch ramp's examples or tokens)."""
        groups = {rule: dataclasses.replace(own, **count) for rule, own in self.group_schedules.items()}
        shape = None if self.decay_shape is None else dataclasses.replace(self.decay_shape, **count)
        return dataclasses.replace(self, group_schedules=groups, decay_shape=shape, **count)

    def position(self, update: int) -> int | float:
        """The schedule index t of optimizer update ``update`` (0-based), in ``interval`` units."""
        if self.ramp is not None:
            return self.ramp.position(update)
        if self.count is not None:
            return self.count(update)
        if self.interval == "epoch":
            return update // self.updates_per_epoch
        return update * self.units_per_update  # step: 1 per update

    def lr(self, update: int) -> float:
        """LR for the reference group (base LR = η) at optimizer update ``update``, times
        :attr:`lr_scale`."""
        t = self.position(update)
        value = self.lr_fn(t)
        if self.plateau is not None and t >= self.plateau_start:
            value *= self.plateau.lr / self.plateau.peak_lr
        return value * self.lr_scale

    def observe(self, metrics: Mapping[str, float], update: int) -> None:
        """Show the plateau the validation ``metrics`` taken after ``update`` updates; those from
        before a chain's plateau phase are not its business (no cut during a warmup)."""
        if self.plateau is not None and self.position(update) >= self.plateau_start:
            self.plateau.observe(metrics[self.monitor])

    def phase_starts(self) -> list[tuple[int, str]]:
        """(first update, name) of every phase of a chain after the first: where the plot marks a join."""
        if self.ramp is not None:
            return [(self.ramp.first_update_at(start), name) for name, start in self.phases[1:]]
        return [(first_update_at(start, self.interval, updates_per_epoch=self.updates_per_epoch,
                                 units_per_update=self.units_per_update), name) for name, start in self.phases[1:]]

    @property
    def measured(self) -> bool:
        """Whether t is measured as the run goes (seconds; tokens of padded rows), so no update's LR
        is known before the run gets there."""
        return self.count is not None

    @property
    def scheduled_decay(self) -> bool:
        """Whether ``optimizer.weight_decay_schedule`` moves the groups' weight decay."""
        return self.decay_follows_lr or self.decay_shape is not None

    def of_group(self, group: Mapping[str, Any]) -> Schedule:
        """The schedule an optimizer group follows: its rule's own, else this one."""
        return self.group_schedules.get(group.get("schedule_rule"), self)

    def shape(self, update: int) -> float:
        """The LR at ``update`` relative to the peak, η × :attr:`lr_scale` (1 at the peak; a
        plateau's cuts included)."""
        return self.lr(update) / (self.peak_lr * self.lr_scale)

    def decay_factor(self, own: Schedule, update: int) -> float:
        """What a group's weight decay λ is multiplied by at ``update`` (``own``: the schedule its
        LR follows): the shape of ``own`` (``weight_decay_schedule=lr``) or of :attr:`decay_shape`."""
        return (own if self.decay_follows_lr else self.decay_shape).shape(update)

    def batch_factor(self, update: int) -> float:
        """``optimizer.lr_scaling``'s factor at this update's batch size over the full batch's (in
        :attr:`lr_scale`): 1 without a batch ramp, and from the ramp's end on."""
        return 1.0 if self.ramp is None else self.ramp.lr_factor(update)

    def momentum(self, update: int) -> float | None:
        """Momentum / beta1 at update ``update``, or None when the schedule leaves it alone."""
        return None if self.momentum_fn is None else self.momentum_fn(self.position(update))


def set_momentum(group: dict[str, Any], momentum: float) -> None:
    """Give an optimizer parameter group the scheduled momentum: Adam's beta1, else SGD's momentum."""
    if "betas" in group:
        group["betas"] = (momentum, group["betas"][1])
    else:
        group["momentum"] = momentum
