"""The run's derived quantities: updates per epoch, the update budget, the schedule's length and
warmup, the LR scale and the global batch, computed once from the config and the data size."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from trainer.batch_ramp import BatchRamp, build_ramp, ramp_on
from trainer.errors import require

#: ``max_updates`` of a run that only a count measured as it goes ends (``trainer.max_time``, a
#: ``trainer.max_tokens`` of padded rows): more updates than any run makes.
UNBOUNDED = 2**62


@dataclass(frozen=True)
class RunPlan:
    """Quantities derived from the config and the data size.

    ``max_updates`` counts optimizer updates (:data:`UNBOUNDED` when only ``trainer.max_time`` or
    a padded ``trainer.max_tokens`` ends the run); ``total_steps`` and ``warmup_steps`` are in the schedule's ``interval`` units
    (updates, epochs, examples, tokens or seconds).
    """

    updates_per_epoch: int
    max_updates: int
    num_epochs: int
    total_steps: int
    warmup_steps: int
    lr_scale: float = 1.0  # multiplies every LR of the schedule: schedule.temperature × the batch-size rule
    accumulate_grad_batches: int = 1  # micro-batches of data.batch_size per update on each rank
    global_batch_size: int = 1  # examples per update over all ranks
    units_per_update: int = 1  # schedule.interval=sample|token: examples or tokens per update (step: 1)
    interval: str = "step"  # schedule.interval: what total_steps and warmup_steps count
    # trainer.batch_ramp: the examples of each update, and the epochs they make (None: every update
    # is global_batch_size, every epoch updates_per_epoch updates)
    ramp: BatchRamp | None = None
    # t is measured as the run goes (interval=time; token over padded rows): no update is known to
    # reach a given t before the run gets there
    measured: bool = False

    def first_update_at(self, t: int) -> int:
        """The first optimizer update at schedule index ``t`` or later (``t`` in interval units)."""
        if self.ramp is not None:
            return self.ramp.first_update_at(t)
        return first_update_at(t, self.interval, updates_per_epoch=self.updates_per_epoch,
                               units_per_update=self.units_per_update)

    def epoch_of(self, update: int) -> int:
        """The epoch optimizer update ``update`` trains in."""
        return update // self.updates_per_epoch if self.ramp is None else self.ramp.epoch_of(update)

    def epoch_start(self, epoch: int) -> int:
        """The first optimizer update of ``epoch``."""
        return epoch * self.updates_per_epoch if self.ramp is None else self.ramp.epoch_start(epoch)

    def samples_before(self, update: int) -> int:
        """Examples (over all ranks) trained before optimizer update ``update``: a batch ramp's
        updates of each size, else ``update`` global batches."""
        return update * self.global_batch_size if self.ramp is None else self.ramp.samples_before(update)

    def data_position(self, update: int) -> tuple[int, int]:
        """(epoch, micro-batches each rank has trained in it) before optimizer update ``update``."""
        epoch = self.epoch_of(update)
        if self.ramp is None:
            return epoch, (update - epoch * self.updates_per_epoch) * self.accumulate_grad_batches
        trained = self.ramp.samples_before(update) - self.ramp.samples_before(self.ramp.epoch_start(epoch))
        return epoch, trained * self.accumulate_grad_batches // self.global_batch_size


def first_update_at(t: int, interval: str, *, updates_per_epoch: int, units_per_update: int) -> int:
    """The first optimizer update whose schedule index (``interval`` units) is at least ``t``: the
    first update of epoch ``t``, or of the examples or tokens past ``t`` (``t`` itself for steps)."""
    if interval == "epoch":
        return t * updates_per_epoch
    return -(-t // units_per_update)


def units_per_update(interval: str, global_batch: int, tokens_per_example: int | None, *, counted_tokens: bool = False) -> int:
    """Schedule units per optimizer update: the global batch's examples (``sample``) or tokens
    (``token``: token data only); 1 for ``step``, and where t is not a multiple of the update
    (``epoch``; ``time``; ``token`` with ``counted_tokens``: padded rows, counted as the run goes)."""
    if interval == "sample":
        return global_batch
    if interval == "token" and not counted_tokens:
        require(tokens_per_example is not None, "schedule.interval",
                "token counts tokens, which this data does not have (its examples are not token sequences): use "
                "sample, or token data such as data=tokens, data=shakespeare_char or data=hf_dataset")
        return global_batch * tokens_per_example
    return 1


def accumulation(cfg: DictConfig, world_size: int = 1) -> int:
    """Micro-batches per update and rank: ``trainer.accumulate_grad_batches``, or what
    ``trainer.global_batch_size`` = data.batch_size × ``world_size`` × accumulation gives."""
    trainer, batch_size = cfg.trainer, cfg.data.batch_size
    if trainer.global_batch_size is None:
        return trainer.accumulate_grad_batches
    require(
        trainer.global_batch_size >= world_size,
        "trainer.global_batch_size",
        f"{trainer.global_batch_size} examples per update cannot give each of {world_size} ranks one: "
        "raise it or launch fewer processes",
    )
    per_rank, rest = divmod(trainer.global_batch_size, batch_size * world_size)
    require(
        rest == 0 and per_rank >= 1,
        "trainer.global_batch_size",
        f"{trainer.global_batch_size} is not a multiple of data.batch_size={batch_size} × {world_size} ranks "
        f"= {batch_size * world_size}: use a multiple of it (e.g. {batch_size * world_size * max(per_rank, 1)}) "
        "or another data.batch_size",
    )
    return per_rank


def plan_run(
    cfg: DictConfig, num_train_examples: int, world_size: int = 1, *, run_length: int | None = None,
    tokens_per_example: int | None = None, counted_tokens: bool = False,
) -> RunPlan:
    """Derive updates per epoch, the update budget and the schedule length; check they fit.
    ``run_length``: the updates a schedule that sets the run's length itself gives (the range test).
    ``tokens_per_example``: the tokens one example trains on, for token data (else None);
    ``counted_tokens``: padded rows of several lengths, whose tokens the run counts as it trains
    them (:class:`~trainer.training.counts.TokenCount`): a budget in tokens ends the run when reached.

    The train loader drops the last partial batch and an epoch ends on the last whole update,
    so updates per epoch = floor(floor(N / batch_size) / (accumulation × world_size)) = floor(N /
    global batch): the same at any world size for the same global batch.
    """
    trainer, schedule = cfg.trainer, cfg.schedule
    accumulate = accumulation(cfg, world_size)
    global_batch = cfg.data.batch_size * accumulate * world_size
    batches = num_train_examples // cfg.data.batch_size
    updates_per_epoch = batches // (accumulate * world_size)
    require(
        updates_per_epoch >= 1,
        "data.batch_size",
        f"{num_train_examples} training examples give {batches} batches of {cfg.data.batch_size}, "
        f"fewer than the {accumulate * world_size} of one update ({accumulate} accumulated × {world_size} ranks): "
        "lower the batch or the accumulation",
    )
    require(trainer.get("max_tokens") is None or tokens_per_example is not None or counted_tokens, "trainer.max_tokens",
            "this data's examples are not token sequences: give the budget as trainer.max_samples or trainer.max_steps")
    units = units_per_update(schedule.interval, global_batch, tokens_per_example, counted_tokens=counted_tokens)
    measured = schedule.interval == "time" or (schedule.interval == "token" and counted_tokens)
    ramp = None
    if ramp_on(trainer.get("batch_ramp")):  # the examples per update vary: so do the updates per epoch
        ramp, max_updates = build_ramp(
            trainer.batch_ramp, trainer, full=global_batch, micro=cfg.data.batch_size * world_size,
            epoch_examples=num_train_examples, tokens_per_example=tokens_per_example, interval=schedule.interval,
            lr_power=LR_SCALING_POWERS[cfg.optimizer.lr_scaling])
        num_epochs, derived_total = ramp.epoch_of(max_updates - 1) + 1, ramp.position(max_updates)
    else:
        max_updates = run_length if run_length is not None else budget_updates(
            trainer, updates_per_epoch, global_batch, None if counted_tokens else tokens_per_example)
        num_epochs = math.ceil(max_updates / updates_per_epoch)
        derived_total = {"epoch": num_epochs, "time": trainer.get("max_time")}.get(schedule.interval,
                                                                                  max_updates * units)
        if measured and schedule.interval == "token":
            derived_total = trainer.get("max_tokens")
    total_steps = schedule.total_steps if schedule.total_steps is not None else derived_total
    warmup_steps = warmup_length(schedule.warmup_steps, schedule.warmup_ratio, total_steps, unit=schedule.interval)
    lr_scale = schedule.temperature * batch_lr_factor(cfg, global_batch)
    require(
        math.isfinite(lr_scale) and lr_scale > 0,
        "schedule.temperature",
        f"schedule.temperature × the optimizer.lr_scaling factor is {lr_scale}, not a usable LR multiplier",
    )
    return RunPlan(
        updates_per_epoch, max_updates, num_epochs, total_steps, warmup_steps, lr_scale=lr_scale,
        accumulate_grad_batches=accumulate, global_batch_size=global_batch, units_per_update=units,
        interval=schedule.interval, ramp=ramp, measured=measured,
    )


def budget_updates(trainer: DictConfig, updates_per_epoch: int, global_batch: int, tokens_per_example: int | None) -> int:
    """The run's updates from its budget: ``trainer.max_steps``, else the updates that first reach
    ``trainer.max_samples`` examples or ``trainer.max_tokens`` tokens of ``tokens_per_example``
    each (each also a cap under ``trainer.max_time``), else :data:`UNBOUNDED` when the run's count
    ends it (``trainer.max_time``; ``trainer.max_tokens`` of padded rows, ``tokens_per_example``
    None), else ``trainer.max_epochs``."""
    if trainer.max_steps is not None:
        return trainer.max_steps
    if trainer.get("max_samples") is not None:
        return -(-trainer.max_samples // global_batch)
    if trainer.get("max_tokens") is not None and tokens_per_example is not None:
        return -(-trainer.max_tokens // (global_batch * tokens_per_example))
    if trainer.get("max_time") is not None or trainer.get("max_tokens") is not None:
        return UNBOUNDED  # the run's count ends it (the clock; the tokens of padded rows)
    return trainer.max_epochs * updates_per_epoch


#: ``schedule.warmup_steps=auto``: W = round(T × this), about 7% (seed 002: "the warmup phase
#: typically spans 5-10% of total training steps"), and the 100 updates of the default job's 1404.
AUTO_WARMUP_RATIO = 1 / 14


def warms_up(schedule: DictConfig) -> bool:
    """Whether ``schedule`` asks for a warmup: any ``warmup_steps`` (``auto`` too) or a ``warmup_ratio``."""
    return schedule.warmup_steps != 0 or schedule.warmup_ratio is not None


def check_one_warmup(warmup_steps: int | str, warmup_ratio: float | None) -> None:
    """A warmup is given as ``schedule.warmup_steps`` or ``schedule.warmup_ratio``, not both
    (``auto`` steps give way to a ratio)."""
    require(
        warmup_ratio is None or warmup_steps in (0, "auto"),
        "schedule.warmup_ratio",
        "set either schedule.warmup_steps or schedule.warmup_ratio, not both "
        "(e.g. schedule.warmup_steps=0 schedule.warmup_ratio=0.1)",
    )


def warmup_length(warmup_steps: int | str, warmup_ratio: float | None, total_steps: int, *, unit: str = "step") -> int:
    """W: ``schedule.warmup_steps``, or ``round(warmup_ratio × total_steps)`` (checked: one of the
    two, :func:`check_one_warmup`), or for ``auto`` steps ``round(T × AUTO_WARMUP_RATIO)``; at most T."""
    if warmup_ratio is not None:
        warmup_steps = round(warmup_ratio * total_steps)
    elif warmup_steps == "auto":  # a warmup that scales with the run: a short run works out of the box
        warmup_steps = round(total_steps * AUTO_WARMUP_RATIO)
    require(
        warmup_steps <= total_steps,
        "schedule.warmup_steps",
        f"warmup of {warmup_steps} {unit}s exceeds schedule.total_steps={total_steps}: shorten the warmup or train longer",
    )
    return warmup_steps


#: ``optimizer.lr_scaling``'s power p: the LR goes as (batch size)^p.
LR_SCALING_POWERS = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


def batch_lr_factor(cfg: DictConfig, global_batch_size: int) -> float:
    """``optimizer.lr_scaling``: (B / reference_batch_size)^p with B the examples per update over
    all ranks (the global batch); p = 1 (linear, Goyal et al.), ½ (sqrt, seed 002: batch 1024
    against 256 runs at 2η), or 0 (none). Under ``trainer.batch_ramp`` B is the full batch, and
    the schedule scales each update by its own size's factor over this one."""
    optimizer = cfg.optimizer
    return (global_batch_size / optimizer.reference_batch_size) ** LR_SCALING_POWERS[optimizer.lr_scaling]
