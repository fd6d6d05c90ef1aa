"""The training step and the loop. :class:`TrainStep` is the one place that owns the step order:

autocast forward -> (scaled) backward -> unscale -> clip -> optimizer step -> schedule update
-> zero_grad.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trainer.checkpoint import FORMAT as CHECKPOINT_FORMAT
from trainer.checkpoint import link_atomic, prune_numbered, rng_state, save_atomic, set_rng_state
from trainer.config import RunPlan
from trainer.data import Dataset
from trainer.data.batches import Batch
from trainer.data.loading import train_batches
from trainer.logger import RunLogger
from trainer.lr_find import RangeTestMonitor
from trainer.optim import optimizer_state, trainable_parameters
from trainer.precision import Precision
from trainer.schedules import Schedule, set_momentum
from trainer.stopping import NonFiniteError, NonFiniteStop, Preempted, StopOnSignal

#: ``loss``: (outputs, targets) -> a scalar tensor to minimise.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Validation batches hold this many training batches: with no activations kept for a backward
#: pass they take less memory than a training step, and fewer, larger batches run faster.
VAL_BATCH_MULTIPLE = 2


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, update: int) -> None:
    """Set every group's LR (and scheduled momentum / beta1) for optimizer update ``update``."""
    lr = schedule.lr(update)
    momentum = schedule.momentum(update)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
        if momentum is not None:
            set_momentum(group, momentum)


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
        loss_fn: Loss,
        clip_grad_norm: float | None,
    ) -> None:
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.precision, self.loss_fn, self.clip_grad_norm = precision, loss_fn, clip_grad_norm
        self.scaler = precision.grad_scaler()
        self.params = list(trainable_parameters(optimizer))
        device = self.params[0].device
        # Counted on the device and read only on logging updates: no per-update host sync.
        self.skipped_updates = torch.zeros((), dtype=torch.long, device=device)
        self.nonfinite_losses = torch.zeros((), dtype=torch.long, device=device)

    def __call__(self, micro_batches: Sequence[Batch], update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run update ``update``; returns its mean loss and pre-clip gradient norm as device tensors.

        An update whose gradients are not finite (a NaN/inf loss, or an fp16 overflow) is skipped
        by the GradScaler and counted in :attr:`skipped_updates`; it still uses up its schedule
        slot, so the schedule advances exactly once per update, skipped or not.
        """
        # Dividing each micro-batch loss by their count makes the summed gradient the mean over
        # the whole update, so the LR means the same thing at any accumulation.
        count = len(micro_batches)
        total_loss = None
        for inputs, targets in micro_batches:
            with self.precision.autocast():
                loss = self.loss_fn(self.model(inputs), targets)
            if count > 1:
                loss = loss / count
            self.scaler.scale(loss).backward()
            total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
        # Unscale before clipping: under fp16 the gradients are multiplied by the loss scale, and
        # clipping (or logging) scaled gradients would compare the wrong norm with max_norm.
        self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm, foreach=True)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        if self.precision.uses_grad_scaler:  # only fp16 needs the loss apart from the gradients
            self.nonfinite_losses += ~torch.isfinite(total_loss)
        if self.scaler.is_enabled():
            self.skipped_updates += ~torch.isfinite(grad_norm)
            self.scaler.step(self.optimizer)  # skips non-finite gradients on the device
            # fp16 adapts its loss scale; the others keep a scale of exactly 1 (a device fill,
            # no sync), which a skip would otherwise halve for good.
            self.scaler.update(None if self.precision.uses_grad_scaler else 1.0)
        elif torch.isfinite(grad_norm):  # CPU (see Precision.grad_scaler): the host check is free
            self.optimizer.step()
        else:
            self.skipped_updates += 1
        # The schedule advances once per optimizer update (never per micro-batch), right after
        # the step that used the current LR, so update t always runs with the schedule's LR at t.
        apply_schedule(self.optimizer, self.schedule, update + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, grad_norm


@dataclass(frozen=True)
class CrossEntropy:
    """``loss=cross_entropy`` (the default): mean cross-entropy (nats) over every target: (N, C)
    logits with (N,) classes, or a language model's (B, T, V) logits with (B, T) next tokens (per
    predicted token). ``label_smoothing`` comes from ``trainer.label_smoothing``."""

    label_smoothing: float = 0.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), label_smoothing=self.label_smoothing)


def class_scores(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``outputs`` are scores of C >= 2 classes (..., C) for ``targets`` that are class
    indices (...); a single output per example (a regression) is not."""
    integer_targets = not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool
    shapes_fit = outputs.dim() >= 1 and outputs.shape[-1] >= 2 and outputs.shape[:-1] == targets.shape
    return outputs.is_floating_point() and integer_targets and shapes_fit


@torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks versions and views)
def evaluate(
    model: nn.Module, batches: Iterable[Batch], precision: Precision, *, flip: bool = False, loss_fn: Loss | None = None
) -> dict[str, float]:
    """``val/loss`` and, when the outputs are class scores and the targets class indices,
    ``val/acc`` (top-1) over every batch; one device sync at the end. An empty split gives {}.

    ``val/loss`` with the built-in cross-entropy (``loss_fn`` None or a :class:`CrossEntropy`) is
    the unsmoothed cross-entropy in nats per target (per example, or per character for text);
    with another loss, that loss's mean over the examples (each batch's value weighted by its
    example count). ``flip=True`` (test-time augmentation for images) scores each image by the
    mean of its outputs and its horizontal mirror's.
    """
    builtin = loss_fn is None or isinstance(loss_fn, CrossEntropy)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = scored = 0
    for inputs, targets in batches:
        with precision.autocast():
            outputs = model(inputs)
            if flip:
                # clone: under CUDA graphs (compile mode reduce-overhead) the second call reuses
                # the first one's output memory.
                outputs = (outputs.clone() + model(inputs.flip(-1))) / 2
        outputs = outputs.float()
        if builtin:
            flat = targets.flatten()
            loss_sum += F.cross_entropy(outputs.flatten(0, -2), flat, reduction="sum")
            count += flat.numel()
        else:
            loss_sum += loss_fn(outputs, targets).float() * len(targets)
            count += len(targets)
        if class_scores(outputs, targets):
            correct += (outputs.argmax(dim=-1) == targets).sum()
            scored += targets.numel()
    model.train(was_training)
    if count == 0:
        return {}
    metrics = {"val/loss": loss_sum.item() / count}
    if scored:
        metrics["val/acc"] = correct.item() / scored
    return metrics


@dataclass
class Checkpointing:
    """Where and how often the loop writes checkpoints (``last.pt``, ``best.pt``, ``step-*.pt``):
    every ``every_n_epochs`` epoch ends, every ``every_n_steps`` updates, on improvement, on a
    stop signal and at the end."""

    run_dir: Path
    every_n_steps: int | None
    every_n_epochs: int
    keep_last_n: int
    config: dict
    fingerprint: dict


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
    checkpointing: Checkpointing
    batch_size: int
    accumulate_grad_batches: int
    val_every_n_epochs: int
    seed: int
    device: torch.device
    loader_workers: int | None = None  # None: batches gathered on the device; else DataLoader workers
    flip_test: bool = False
    objective: str = "val/loss"
    nonfinite: str = "skip"
    range_test: RangeTestMonitor | None = None
    best: float = math.inf
    _bad_seen: int = 0
    _train_loss: float | None = None  # the last training loss read from the device
    _last_val: tuple[int, dict[str, float]] = (-1, {})
    _last_saved: int | None = None  # the update of the run dir's last.pt, once there is one

    def state_dict(self, update: int) -> dict:
        """Everything a resumed run needs to continue as if it had never stopped."""
        plateau = self.schedule.plateau
        return {
            "format": CHECKPOINT_FORMAT,
            "update": update,
            "model": self.model.state_dict(),
            "optimizer": optimizer_state(self.optimizer),
            "precision": self.step.precision.name,
            "scaler": self.step.scaler.state_dict(),
            "schedule": {
                "fingerprint": self.checkpointing.fingerprint,
                "plateau": None if plateau is None else plateau.state_dict(),
            },
            "counters": {
                "skipped_updates": int(self.step.skipped_updates),
                "nonfinite_losses": int(self.step.nonfinite_losses),
                "best": self.best,
            },
            "data": {"epoch": update // self.plan.updates_per_epoch,
                     "batch": (update % self.plan.updates_per_epoch) * self.accumulate_grad_batches,
                     "seed": self.seed},
            "rng": rng_state(),
            "config": self.checkpointing.config,
            # val/* logged at this very step: a resumed run re-writes them after TensorBoard's
            # purge of everything at or after the checkpoint's step.
            "val_metrics": self._last_val[1] if self._last_val[0] == update else {},
            # The range test's losses so far: its divergence check and suggestion use all of them.
            "range_test": None if self.range_test is None else dataclasses.asdict(self.range_test),
        }

    def load_state_dict(self, state: dict, *, restore_plateau: bool = True) -> int:
        """Restore the rest of a checkpoint's state; returns the update to continue from.

        The model and optimizer are not loaded here: :func:`trainer.run.train` loads them before it
        writes anything, so a checkpoint that does not fit is a config error, not a half-made run.
        """
        # A loss scale carries over only between runs of the same precision: fp16's dynamic scale
        # means nothing to bf16's unit scaler (and the CPU's disabled one saves an empty state).
        # (Checkpoints from before the precision was saved are taken to be this run's.)
        if state.get("precision", self.step.precision.name) == self.step.precision.name and state["scaler"]:
            self.step.scaler.load_state_dict(state["scaler"])
        if restore_plateau and self.schedule.plateau is not None and state["schedule"]["plateau"] is not None:
            self.schedule.plateau.load_state_dict(state["schedule"]["plateau"])
        counters = state["counters"]
        self.step.skipped_updates.fill_(counters["skipped_updates"])
        self.step.nonfinite_losses.fill_(counters["nonfinite_losses"])
        self.best = counters["best"]
        self._bad_seen = self._bad_count()
        self.logger.rewrite(state["update"], state["val_metrics"])
        self._last_val = (state["update"], state["val_metrics"])
        self._last_saved = state["update"]
        if self.range_test is not None and state.get("range_test") is not None:
            self.range_test = RangeTestMonitor(**state["range_test"])
        set_rng_state(state["rng"])
        return state["update"]

    def save(self, update: int, *, improved: bool = False) -> None:
        self._read_logs(update)  # the records of the updates a resume will not replay go to disk first
        if self.nonfinite != "skip":  # and the unlogged updates since the last read: last.pt stays good
            self._enforce_nonfinite_policy(update)
        self.logger.flush()
        ckpt = self.checkpointing
        also = [ckpt.run_dir / "best.pt"] if improved else []
        if ckpt.keep_last_n > 0:
            also.append(ckpt.run_dir / f"step-{update:08d}.pt")
        save_atomic(self.state_dict(update), ckpt.run_dir / "last.pt", also=also)
        self._last_saved = update
        if ckpt.keep_last_n > 0:
            prune_numbered(ckpt.run_dir, ckpt.keep_last_n)

    def _bad_count(self) -> int:
        """Non-finite events the policy acts on. fp16 overflow skips are routine (the scaler
        is calibrating), so there only a non-finite loss counts."""
        if self.precision.uses_grad_scaler:
            return int(self.step.nonfinite_losses)
        return int(self.step.skipped_updates)

    def _enforce_nonfinite_policy(self, update: int) -> None:
        """Called where logged values are read (the loop syncs there anyway)."""
        bad = self._bad_count()
        if bad == self._bad_seen or self.nonfinite == "skip":
            self._bad_seen = bad
            return
        message = (
            f"non-finite loss or gradients by update {update}; the bad updates were skipped, so the "
            "parameters are still finite"
        )
        if self.nonfinite == "raise":
            raise NonFiniteError(message)
        self._bad_seen = bad
        run_dir = self.checkpointing.run_dir
        if self._last_saved is None:
            before = "no checkpoint was written before it"
        else:  # written before the first bad update (save checks first): keep it from the save below
            link_atomic(run_dir / "last.pt", run_dir / "last_good.pt")
            before = (f"the last checkpoint before it is {run_dir / 'last_good.pt'} (update {self._last_saved}): "
                      f"resume from it with trainer.resume={run_dir / 'last_good.pt'}, e.g. with a lower "
                      "optimizer.lr and trainer.resume_schedule=override")
        self.save(update)
        raise NonFiniteStop(f"{message}; saved them in {run_dir / 'last.pt'}; {before}")

    def evaluate(self) -> dict[str, float]:
        # With data.loader=dataloader the validation split stays in host memory: copy each batch over
        # (a no-op when it already is on the device).
        batches = self.dataset.val_batches(VAL_BATCH_MULTIPLE * self.batch_size)
        batches = ((x.to(self.device), y.to(self.device)) for x, y in batches)
        return evaluate(self.model, batches, self.precision, flip=self.flip_test, loss_fn=self.step.loss_fn)

    def _read_logs(self, updates_done: int) -> None:
        """Write the pending logged updates (one host-device sync), then apply the non-finite policy."""
        loss = self.logger.read()
        if loss is not None:
            self._train_loss = loss
            self._enforce_nonfinite_policy(updates_done)

    def validate(self, updates_done: int) -> dict[str, float]:
        self._read_logs(updates_done)
        metrics = self.evaluate()
        if not metrics:  # no validation split
            return metrics
        self.logger.log_val(updates_done, metrics)
        self._last_val = (updates_done, metrics)
        if self.schedule.plateau is not None:
            self.schedule.plateau.observe(metrics[self.schedule.monitor])
            # A reduction applies from the very next update, not one step late.
            apply_schedule(self.optimizer, self.schedule, updates_done)
        return metrics

    def run(self, start_update: int = 0) -> dict[str, float]:
        """Train from ``start_update`` to ``plan.max_updates``; validate and checkpoint at epoch ends.

        Resuming at update u continues epoch u // updates_per_epoch from the batch it stopped at:
        the epoch's order is re-created from (seed, epoch), so no example is repeated or skipped.
        """
        plan, logger, ckpt = self.plan, self.logger, self.checkpointing
        upe = plan.updates_per_epoch
        apply_schedule(self.optimizer, self.schedule, start_update)
        momentum_scheduled = self.schedule.momentum_fn is not None
        read_each_log = self.range_test is not None or self.nonfinite != "skip"
        self.model.train()
        update, metrics, diverged = start_update, {}, False
        # A resumed finished run (a requeued job) trains and validates nothing; a range test that
        # diverged before its checkpoint is finished, short of max_updates.
        finished = update >= plan.max_updates or (self.range_test is not None
                                                  and self.range_test.stopped_early_at is not None)
        with StopOnSignal() as stop:
            for epoch in range(update // upe, plan.num_epochs if not finished else 0):
                batches = train_batches(
                    self.dataset.train_epoch(self.batch_size, seed=self.seed, epoch=epoch),
                    start_batch=(update - epoch * upe) * self.accumulate_grad_batches,
                    device=self.device, num_workers=self.loader_workers,
                )
                epoch_end = min((epoch + 1) * upe, plan.max_updates)
                while update < epoch_end:
                    micro = [next(batches) for _ in range(self.accumulate_grad_batches)]
                    log_now = logger.due(update)
                    lrs = applied_lrs(self.optimizer) if log_now else None
                    momentum = applied_momentum(self.optimizer) if log_now and momentum_scheduled else None
                    loss, grad_norm = self.step(micro, update)
                    if log_now:
                        logger.record(
                            update, lrs=lrs, momentum=momentum, loss=loss, grad_norm=grad_norm, epoch=epoch,
                            skipped_updates=self.step.skipped_updates,
                        )
                    # The range test and a stop/raise policy act on each logged update's values;
                    # otherwise they are read in batches, with one sync per read.
                    if logger.read_due(update) or (log_now and read_each_log):
                        self._read_logs(update + 1)
                    if self.range_test is not None:  # it logs (and so reads) every update
                        diverged = self.range_test.record(lrs[0], self._train_loss)
                    update += 1
                    logger.advance()
                    if diverged:
                        break
                    if update == epoch_end:
                        break  # the epoch end below checkpoints this update when due
                    if ckpt.every_n_steps and update % ckpt.every_n_steps == 0:
                        self.save(update)
                    if stop.requested:
                        self.save(update)
                        raise Preempted(stop.requested, update)
                improved = False
                last = update >= plan.max_updates or diverged
                if (epoch + 1) % self.val_every_n_epochs == 0 or last:
                    metrics.update(self.validate(update))
                    if self.objective in metrics:
                        improved = metrics[self.objective] < self.best
                        self.best = min(self.best, metrics[self.objective])
                step_due = ckpt.every_n_steps and update % ckpt.every_n_steps == 0
                if (epoch + 1) % ckpt.every_n_epochs == 0 or step_due or last or improved or stop.requested:
                    self.save(update, improved=improved)
                if stop.requested:
                    raise Preempted(stop.requested, update)
                if diverged:
                    logger.bar.write(f"range test: loss diverged at update {update}; stopping")
                    break
        if self.objective not in metrics:  # resumed a finished run: report its checkpoint's last validation
            metrics.update(self._last_val[1] if self._last_val[0] == update and self._last_val[1] else self.evaluate())
        if self._train_loss is not None:  # None when a finished run was resumed: nothing trained
            metrics["train/loss"] = self._train_loss
        metrics["updates"] = update
        metrics["skipped_updates"] = int(self.step.skipped_updates)
        return metrics
