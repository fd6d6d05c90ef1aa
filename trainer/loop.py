"""The training step and the loop. :class:`TrainStep` is the one place that owns the step order:

autocast forward -> (scaled) backward -> unscale -> clip -> optimizer step -> schedule update
-> zero_grad.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import RunPlan
from trainer.data import Dataset
from trainer.data.batches import epoch_batches, eval_batches
from trainer.logger import RunLogger
from trainer.optim import trainable_parameters
from trainer.precision import Precision
from trainer.schedules import Schedule

Batch = tuple[torch.Tensor, torch.Tensor]


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, update: int) -> None:
    """Set every group's LR (and scheduled momentum / beta1) for optimizer update ``update``."""
    lr = schedule.lr(update)
    momentum = schedule.momentum(update)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
        if momentum is not None:
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            else:
                group["momentum"] = momentum


def applied_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The LR each group will use in its next step, read from the optimizer itself."""
    return [group["lr"] for group in optimizer.param_groups]


def applied_momentum(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


class TrainStep:
    """One optimizer update over ``accumulate_grad_batches`` micro-batches."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        precision: Precision,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        clip_grad_norm: float | None,
    ) -> None:
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.precision, self.loss_fn, self.clip_grad_norm = precision, loss_fn, clip_grad_norm
        self.scaler = precision.grad_scaler()
        self.params = list(trainable_parameters(optimizer))

    def __call__(self, micro_batches: Sequence[Batch], update: int, *, want_grad_norm: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run update ``update``; returns its mean loss and pre-clip gradient norm as device tensors.

        The norm is None when clipping is off and ``want_grad_norm`` is false (nothing needs it).
        """
        # Dividing each micro-batch loss by their count makes the summed gradient the mean over
        # the whole update, so the LR means the same thing at any accumulation.
        scale = 1.0 / len(micro_batches)
        total_loss = torch.zeros((), device=micro_batches[0][0].device)
        for inputs, targets in micro_batches:
            with self.precision.autocast():
                loss = self.loss_fn(self.model(inputs), targets) * scale
            self.scaler.scale(loss).backward()
            total_loss += loss.detach()
        # Unscale before clipping: under fp16 the gradients are multiplied by the loss scale, and
        # clipping (or logging) scaled gradients would compare the wrong norm with max_norm.
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.clip_grad_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm, foreach=True)
        elif want_grad_norm:
            grad_norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # The schedule advances once per optimizer update (never per micro-batch), right after
        # the step that used the current LR, so update t always runs with the schedule's LR at t.
        apply_schedule(self.optimizer, self.schedule, update + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, grad_norm


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, precision: Precision) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy over the whole split; one device sync at the end."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for inputs, targets in eval_batches(x, y, batch_size):
        with precision.autocast():
            logits = model(inputs)
        loss_sum += nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
    model.train(was_training)
    n = len(y)
    return {"val/loss": loss_sum.item() / n, "val/acc": correct.item() / n}


@dataclass
class Loop:
    """Everything the loop needs, built by :mod:`trainer.run`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    step: TrainStep
    dataset: Dataset
    plan: RunPlan
    logger: RunLogger
    precision: Precision
    batch_size: int
    accumulate_grad_batches: int
    val_every_n_epochs: int
    seed: int

    def validate(self, updates_done: int) -> dict[str, float]:
        metrics = evaluate(self.model, self.dataset.val_x, self.dataset.val_y, self.batch_size, self.precision)
        self.logger.log_val(updates_done, metrics)
        if self.schedule.plateau is not None:
            self.schedule.plateau.observe(metrics[self.schedule.monitor])
            # A reduction applies from the very next update, not one step late.
            apply_schedule(self.optimizer, self.schedule, updates_done)
        return metrics

    def run(self) -> dict[str, float]:
        """Train for ``plan.max_updates`` updates; validate per ``val_every_n_epochs`` and at the end."""
        plan, logger = self.plan, self.logger
        apply_schedule(self.optimizer, self.schedule, 0)
        momentum_scheduled = self.schedule.momentum_fn is not None
        self.model.train()
        update, metrics = 0, {}
        for epoch in range(plan.num_epochs):
            batches = epoch_batches(
                self.dataset.train_x, self.dataset.train_y, self.batch_size, seed=self.seed, epoch=epoch
            )
            updates_this_epoch = min(plan.updates_per_epoch, plan.max_updates - update)
            for _ in range(updates_this_epoch):
                micro = [next(batches) for _ in range(self.accumulate_grad_batches)]
                log_now = logger.due(update)
                lrs = applied_lrs(self.optimizer) if log_now else None
                momentum = applied_momentum(self.optimizer) if log_now and momentum_scheduled else None
                loss, grad_norm = self.step(micro, update, want_grad_norm=log_now)
                if log_now:
                    metrics["train/loss"] = logger.log_train(
                        update, lrs=lrs, momentum=momentum, loss=loss, grad_norm=grad_norm, epoch=epoch
                    )
                update += 1
                logger.advance()
            last_epoch = update >= plan.max_updates
            if (epoch + 1) % self.val_every_n_epochs == 0 or last_epoch:
                metrics.update(self.validate(update))
        metrics["updates"] = update
        return metrics
