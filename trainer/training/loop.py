"""The loop: epochs of updates, validations and checkpoints, in order. It owns no policy: the
controls (:mod:`trainer.controls`) act on what it reads, and each part keeps its own state and
cadence (the step its loss scale, the checkpointer when it is due and the best objective, the
logger when it reads)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from trainer.controls import Controls, Read, Stop
from trainer.controls.signals import StopOnSignal
from trainer.data.loading import TrainBatches
from trainer.distributed import World
from trainer.errors import Preempted
from trainer.plan import RunPlan
from trainer.rundir.checkpoint import Checkpointer
from trainer.rundir.logger import RunLogger
from trainer.schedules.schedule import applied_lrs, applied_momentum
from trainer.training.clock import paused
from trainer.training.evaluate import Validation, at_eval_weights, move_to
from trainer.training.step import TrainStep


@dataclass
class Loop:
    """Everything the loop orders, built by :func:`trainer.app.build.build_loop`."""

    step: TrainStep
    batches: TrainBatches
    validation: Validation
    logger: RunLogger
    checkpoints: Checkpointer
    controls: Controls
    plan: RunPlan
    val_every_n_epochs: int = 1
    objective: str = "val/loss"
    bn_batches: int = 0  # training micro-batches that recompute BatchNorm at a schedule-free optimizer's x
    world: World = field(default_factory=World)
    train_loss: float | None = None  # the last training loss read from the device
    ending: Stop | None = None  # why the run ended before max_updates, if a control ended it

    def run(self, start_update: int = 0) -> dict[str, float]:
        """Train from ``start_update`` to ``plan.max_updates``; validate and checkpoint at epoch ends.

        Resuming at update u continues its epoch (``plan.epoch_of``) from the batch it stopped at:
        the epoch's order is re-created from (seed, epoch), so no example is repeated or skipped.
        A resumed run that had ended (its last update, or a control's stop) trains nothing.
        """
        self.checkpoints.resume_rng()  # last: nothing before the first update draws from it
        self.step.begin(start_update)
        self.step.model.train()
        move_to(self.step.optimizer, "y")  # schedule-free: gradients are taken at y (a checkpoint holds x)
        update, metrics = start_update, {}
        self.ending = self.controls.ended() or self.step.spent()
        with StopOnSignal() as signals:
            first, last = self.plan.epoch_of(update), self.plan.num_epochs
            for epoch in range(first, last if self.ending is None and update < self.plan.max_updates else first):
                update = self._epoch(epoch, update, signals, metrics)
                if self.ending is not None:
                    break
        move_to(self.step.optimizer, "x")  # the run ends at x: the model trainer.fit hands back is the one validated
        if self.objective not in metrics:  # resumed a finished run: report its checkpoint's last validation
            metrics.update(self.logger.val_at(update) or self.controls.validate(self.validation))
        if self.train_loss is not None:  # None when a finished run was resumed: nothing trained
            metrics["train/loss"] = self.train_loss
        metrics["updates"] = update
        for control in self.controls:
            metrics.update(control.final_metrics())
        return metrics

    def _epoch(self, epoch: int, update: int, signals: StopOnSignal, metrics: dict[str, float]) -> int:
        """Updates ``update..`` of ``epoch``, up to its end or ``max_updates``, then its validation
        and checkpoint when due; returns the updates done."""
        end = min(self.plan.epoch_start(epoch + 1), self.plan.max_updates)
        batches = self.batches.epoch(epoch, update)
        while update < end and self.ending is None:
            self._update(update, epoch, next(batches))
            update += 1
            self.logger.advance()
            if update < end and self.ending is None:  # the epoch's end checkpoints its last update
                self._between_updates(update, signals)
        batches.close()  # the BatchNorm pass may read the epoch's first batches again (a map-style loader)
        last = update >= self.plan.max_updates or self.ending is not None
        validating, improved = (epoch + 1) % self.val_every_n_epochs == 0 or last, False
        with self._at_x(epoch if validating else None):  # one switch to x for the validation and the checkpoint
            if validating:
                validation = self._validate(update)  # its read may end the run
                last = last or self.ending is not None
                metrics.update(validation)
                if self.objective in metrics:
                    improved = self.checkpoints.improves(metrics[self.objective])
                stop = self.controls.after_validation(validation, update, last=last)  # every control sees it
                self.ending = self.ending or stop
            preempted = signals.agreed(self.world)
            if self.checkpoints.due_at_epoch_end(epoch, update) or last or improved or preempted or self.ending:
                self._checkpoint(update, improved=improved)
        if preempted:
            raise Preempted(preempted, update)
        if self.ending is not None:
            self.logger.write(self.ending.message)
        return update

    def _between_updates(self, update: int, signals: StopOnSignal) -> None:
        if self.checkpoints.due_after_update(update):
            self._checkpoint(update)
        preempted = signals.agreed(self.world)
        if preempted:
            self._checkpoint(update)
            raise Preempted(preempted, update)

    def _update(self, update: int, epoch: int, micro_batches: list) -> None:
        """One optimizer update with its logging."""
        optimizer, log_now = self.step.optimizer, self.logger.due(update)
        lrs = applied_lrs(optimizer) if log_now else None
        momentum = applied_momentum(optimizer) if log_now and self.step.schedule.momentum_fn is not None else None
        wds = [g["weight_decay"] for g in optimizer.param_groups] if log_now and self.step.schedule.scheduled_decay else None
        loss, grad_norm = self.step(micro_batches, update)
        if log_now:
            self.logger.record(update, lrs=lrs, momentum=momentum, loss=loss, grad_norm=grad_norm, epoch=epoch,
                               counters=self.controls.counters(), wds=wds)
        # Controls that act on each logged update read it at once; otherwise reads are batched,
        # one sync per read.
        if self.logger.read_due(update) or (log_now and self.controls.acts_on_each_log):
            self._read(update + 1)
        self.ending = self.ending or self.step.spent()  # max_time, padded max_tokens: no update past the budget

    def _read(self, updates_done: int, *, before_checkpoint: bool = False) -> None:
        """Write the pending logged updates (one host-device sync) and show them to the controls:
        a stop with an error checkpoints this update and raises it; one without ends the run at
        the next epoch end it reaches. Before a checkpoint the controls look even with nothing
        pending (their counters cover unlogged updates too)."""
        records = self.logger.read(updates_done)
        if records:
            self.train_loss = records[-1]["train/loss"]
        elif not before_checkpoint:
            return
        read = Read(updates_done, records, self.checkpoints.run_dir, self.checkpoints.last_saved, self.logger.write)
        stop = self.controls.on_read(read)
        if stop is not None and stop.error is not None:
            self._save(updates_done, keep_last_as=stop.keep_last_as)
            raise stop.error
        self.ending = self.ending or stop

    def _validate(self, updates_done: int) -> dict[str, float]:
        self._read(updates_done)
        metrics = self.controls.validate(self.validation)
        if metrics:  # none without a validation split
            self.logger.log_val(updates_done, metrics)
        return metrics

    def _checkpoint(self, update: int, *, improved: bool = False) -> None:
        # The records of the updates a resume will not replay go to disk first, and the controls
        # see them (a non-finite update since the last read keeps last.pt from holding it); the
        # training clock stands still for all of it, as for the write.
        with paused(self.step.clock):
            self._read(update, before_checkpoint=True)
            self._save(update, improved=improved)

    def _save(self, update: int, *, improved: bool = False, keep_last_as: str | None = None) -> None:
        self.logger.flush()
        with self._at_x():  # a checkpoint holds the weights validation scores (and resumes exactly from them)
            self.checkpoints.save(update, val_metrics=self.logger.val_at(update), improved=improved,
                                  keep_last_as=keep_last_as)

    @contextlib.contextmanager
    def _at_x(self, epoch: int | None = None) -> Iterator[None]:
        """The optimizer's evaluation weights (schedule-free's x) in the block, the training clock stopped;
        with ``epoch``, BatchNorm statistics recomputed there from the epoch's first training micro-batches."""
        count = self.bn_batches if epoch is not None else 0
        recompute = lambda: self.validation.recompute_batch_norm(lambda: self.batches.first(epoch, count))  # noqa: E731
        with paused(self.step.clock), at_eval_weights(self.step.optimizer, recompute if count else None):
            yield
