"""The training step and the loop. :class:`TrainStep` is the one place that owns the step order:

autocast forward -> (scaled) backward -> unscale -> clip -> spike check -> optimizer step -> weight
EMA -> schedule update -> zero_grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trainer.checkpoint import FORMAT as CHECKPOINT_FORMAT
from trainer.checkpoint import link_atomic, prune_numbered, rng_state, save_atomic, set_rng_state
from trainer.config import RunPlan
from trainer.data import Dataset
from trainer.data.batches import Batch
from trainer.data.loading import train_batches, val_batches
from trainer.distributed import World
from trainer.ema import WeightEMA
from trainer.errors import ConfigError
from trainer.finetune import freeze_until_due
from trainer.grad_spike import GradSpike, vetoing
from trainer.logger import RunLogger
from trainer.lr_find import RangeTestMonitor
from trainer.optim import optimizer_state, trainable_parameters
from trainer.precision import Precision
from trainer.schedules import Schedule, set_momentum
from trainer.stopping import EarlyStopping, GradSpikeStop, NonFiniteError, NonFiniteStop, Preempted, StopOnSignal

#: ``loss``: (outputs, targets) -> a scalar tensor to minimise.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Validation batches hold this many training batches: with no activations kept for a backward
#: pass they take less memory than a training step, and fewer, larger batches run faster.
VAL_BATCH_MULTIPLE = 2


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, update: int) -> None:
    """Set every group's LR (and scheduled momentum / beta1) for optimizer update ``update``, and
    which groups are frozen then (``trainer.unfreeze``: LR 0, no gradients)."""
    lr = schedule.lr(update)
    momentum = schedule.momentum(update)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
        if momentum is not None:
            set_momentum(group, momentum)
    freeze_until_due(optimizer.param_groups, update)


def applied_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The LR each group will use in its next step, read from the optimizer itself."""
    return [group["lr"] for group in optimizer.param_groups]


def applied_momentum(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


class TrainStep:
    """One optimizer update over ``accumulate_grad_batches`` micro-batches (on each rank).

    ``model`` is the module to call: under DDP its wrapper, which averages the gradients over the
    ranks in the backward of the last micro-batch (the others skip the all-reduce), so clipping
    and the finiteness check see the same global gradient on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        precision: Precision,
        loss_fn: Loss,
        clip_grad_norm: float | None,
        world: World | None = None,
        *,
        grad_spike: GradSpike | None = None,
        ema: WeightEMA | None = None,
    ) -> None:
        self.world = world or World()
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.grad_spike, self.ema = grad_spike, ema
        self.precision, self.loss_fn, self.clip_grad_norm = precision, loss_fn, clip_grad_norm
        self.params = list(trainable_parameters(optimizer))
        device = self.params[0].device
        # Under FSDP2 a rank's scaler sees only its own gradient shard, so ranks could skip
        # different updates: there the global norm decides, on the host (one sync per update).
        self.sharded = self.world.strategy == "fsdp"
        self.scaler = torch.amp.GradScaler(device.type, enabled=False) if self.sharded else precision.grad_scaler()
        # Counted on the device and read only on logging updates: no per-update host sync.
        self.skipped_updates = torch.zeros((), dtype=torch.long, device=device)
        self.nonfinite_losses = torch.zeros((), dtype=torch.long, device=device)

    def __call__(self, micro_batches: Sequence[Batch], update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run update ``update``; returns its mean loss and pre-clip gradient norm as device tensors.

        An update whose gradients are not finite (a NaN/inf loss, or an fp16 overflow) is skipped
        by the GradScaler and counted in :attr:`skipped_updates`; it still uses up its schedule
        slot, so the schedule advances exactly once per update, skipped or not. A gradient-norm
        spike (``trainer.grad_spike``, skip or stop) is skipped the same way and counted in
        ``grad_spike.spikes``. The weight EMA averages in the weights of applied updates only.
        """
        # Dividing each micro-batch loss by their count makes the summed gradient the mean over
        # the whole update, so the LR means the same thing at any accumulation.
        count = len(micro_batches)
        total_loss = None
        for index, (inputs, targets) in enumerate(micro_batches):
            with self.world.gradient_sync(self.model, enabled=index == count - 1):
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
        if self.sharded:  # a DTensor: the norm over every rank's shards
            grad_norm = grad_norm.full_tensor()
        if self.precision.uses_grad_scaler:  # only fp16 needs the loss apart from the gradients
            self.nonfinite_losses += ~torch.isfinite(total_loss)
        finite = torch.isfinite(grad_norm)
        # Judged on the pre-clip norm against earlier updates' norms (the window excludes this one).
        spike = self.grad_spike.observe(grad_norm) if self.grad_spike is not None else None
        veto = spike if spike is not None and self.grad_spike.vetoes else None
        self.skipped_updates += ~finite
        if self.scaler.is_enabled():
            with vetoing(self.scaler, self.optimizer, veto):
                self.scaler.step(self.optimizer)  # skips non-finite gradients (and a veto) on the device
            # fp16 adapts its loss scale; the others keep a scale of exactly 1 (a device fill,
            # no sync), which a skip would otherwise halve for good.
            self.scaler.update(None if self.precision.uses_grad_scaler else 1.0)
            applied = finite if veto is None else finite & ~veto
        else:  # CPU (see Precision.grad_scaler) or FSDP2: the host check is free, or already paid
            applied = bool(finite) and not (veto is not None and bool(veto))
            if applied:
                self.optimizer.step()
        # After the step, from the weights it wrote; a skipped update leaves the average as it was.
        if self.ema is not None:
            self.ema.update(applied)
        # The schedule advances once per optimizer update (never per micro-batch), right after
        # the step that used the current LR, so update t always runs with the schedule's LR at t.
        apply_schedule(self.optimizer, self.schedule, update + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, grad_norm

    def state_dict(self) -> dict:
        """The loss scale, the non-finite counters, the spike window and the weight EMA, in the
        checkpoint's layout."""
        return {
            "precision": self.precision.name,
            "scaler": self.scaler.state_dict(),
            "counters": {
                "skipped_updates": int(self.skipped_updates),
                "nonfinite_losses": int(self.nonfinite_losses),
            },
            "grad_spike": None if self.grad_spike is None else self.grad_spike.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        # A loss scale carries over only between runs of the same precision: fp16's dynamic scale
        # means nothing to bf16's unit scaler (and the CPU's disabled one saves an empty state).
        # (Checkpoints from before the precision was saved are taken to be this run's.)
        if state.get("precision", self.precision.name) == self.precision.name and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_updates.fill_(state["counters"]["skipped_updates"])
        self.nonfinite_losses.fill_(state["counters"]["nonfinite_losses"])
        # A checkpoint from a run without them: the window starts empty, the EMA from its weights.
        if self.grad_spike is not None and state.get("grad_spike") is not None:
            self.grad_spike.load_state_dict(state["grad_spike"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])


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
    model: nn.Module, batches: Iterable[Batch], precision: Precision, *, flip: bool = False,
    loss_fn: Loss | None = None, world: World | None = None,
) -> dict[str, float]:
    """``val/loss`` and, when the outputs are class scores and the targets class indices,
    ``val/acc`` (top-1) over every batch; one device sync at the end. An empty split gives {}.
    Under ``world``, each rank passes its own shard of the split and the sums (loss, correct
    answers, counts) are added over the ranks, so every rank gets the same numbers.

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
    sums = torch.tensor([count, scored], dtype=torch.float64, device=device)
    sums = (world or World()).sum(torch.cat([torch.stack([loss_sum.double(), correct.double()]), sums]))
    loss_total, correct_total, count, scored = sums.tolist()
    if count == 0:
        return {}
    metrics = {"val/loss": loss_total / count}
    if scored:
        metrics["val/acc"] = correct_total / scored
    return metrics


class Checkpointer:
    """Knows when a checkpoint is due and writes it: ``last.pt`` every ``every_n_epochs`` epoch
    ends, every ``every_n_steps`` updates, on a stop signal and at the end; ``best.pt`` whenever
    the objective improves (it keeps the best value seen); ``keep_last_n`` numbered copies."""

    def __init__(
        self, run_dir: Path, *, every_n_steps: int | None, every_n_epochs: int, keep_last_n: int, config: dict,
        fingerprint: dict,
    ) -> None:
        self.run_dir, self.every_n_steps, self.every_n_epochs = run_dir, every_n_steps, every_n_epochs
        self.keep_last_n, self.config, self.fingerprint = keep_last_n, config, fingerprint
        self.best = math.inf

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    def due_after_update(self, updates_done: int) -> bool:
        return bool(self.every_n_steps) and updates_done % self.every_n_steps == 0

    def due_at_epoch_end(self, epoch: int, updates_done: int) -> bool:
        return (epoch + 1) % self.every_n_epochs == 0 or self.due_after_update(updates_done)

    def improves(self, objective: float) -> bool:
        """Take a validation's objective (minimised); True when it beats every earlier one."""
        improved = objective < self.best
        self.best = min(self.best, objective)
        return improved

    def write(self, state: dict, update: int, *, improved: bool = False) -> None:
        """``last.pt`` and, as hard links to the same bytes, ``best.pt`` and the numbered copy:
        all in place before ``last.pt`` is replaced (:func:`~trainer.checkpoint.save_atomic`)."""
        also = [self.run_dir / "best.pt"] if improved else []
        if self.keep_last_n > 0:
            also.append(self.run_dir / f"step-{update:08d}.pt")
        save_atomic(state, self.last, also=also)
        if self.keep_last_n > 0:
            prune_numbered(self.run_dir, self.keep_last_n)


@dataclass
class Loop:
    """Everything the loop needs, built by :mod:`trainer.run`. Each part keeps its own state
    and cadence (the step its counters, the schedule its plateau, the checkpointer its best value
    and when it is due, the range test its losses); the loop only orders them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    step: TrainStep
    dataset: Dataset
    plan: RunPlan
    logger: RunLogger
    precision: Precision
    checkpointer: Checkpointer
    batch_size: int
    accumulate_grad_batches: int
    val_every_n_epochs: int
    seed: int
    device: torch.device
    loader_workers: int | None = None  # None: batches gathered on the device; else DataLoader workers
    flip_test: bool = False
    objective: str = "val/loss"
    nonfinite: str = "skip"
    range_test: RangeTestMonitor | None = None  # an observer of every update's LR and loss
    early_stopping: EarlyStopping | None = None  # trainer.early_stopping, when its patience is set
    world: World = field(default_factory=World)  # the ranks (one outside a launch)
    _bad_seen: int = 0
    _train_loss: float | None = None  # the last training loss read from the device
    _last_val: tuple[int, dict[str, float]] = (-1, {})
    _last_saved: int | None = None  # the update of the run dir's last.pt, once there is one
    _spikes_seen: int = 0  # the gradient-norm spikes the stop action has acted on

    def state_dict(self, update: int) -> dict:
        """Everything a resumed run needs to continue as if it had never stopped."""
        step = self.step.state_dict()
        return {
            "format": CHECKPOINT_FORMAT,
            "update": update,
            "model": self.world.model_state(self.model),
            "optimizer": self.world.full_optimizer_state(optimizer_state(self.optimizer)),
            **step,
            "schedule": {"fingerprint": self.checkpointer.fingerprint, **self.schedule.state_dict()},
            "counters": {**step["counters"], "best": self.checkpointer.best},
            "data": {"epoch": update // self.plan.updates_per_epoch,
                     "batch": (update % self.plan.updates_per_epoch) * self.accumulate_grad_batches,
                     "seed": self.seed},
            "rng": rng_state(),
            "config": self.checkpointer.config,
            # val/* logged at this very step: a resumed run re-writes them after TensorBoard's
            # purge of everything at or after the checkpoint's step.
            "val_metrics": self._last_val[1] if self._last_val[0] == update else {},
            "range_test": None if self.range_test is None else self.range_test.state_dict(),
            "early_stopping": None if self.early_stopping is None else self.early_stopping.state_dict(),
        }

    def load_state_dict(self, state: dict, *, restore_plateau: bool = True) -> int:
        """Restore the rest of a checkpoint's state; returns the update to continue from.

        The model and optimizer are not loaded here: :func:`trainer.run.train` loads them before it
        writes anything, so a checkpoint that does not fit is a config error, not a half-made run.
        """
        self.step.load_state_dict(state)
        if restore_plateau:
            self.schedule.load_state_dict(state["schedule"])
        self.checkpointer.best = state["counters"]["best"]
        self._bad_seen = self._bad_count()
        self.logger.rewrite(state["update"], state["val_metrics"])
        self._last_val = (state["update"], state["val_metrics"])
        self._last_saved = state["update"]
        if self.range_test is not None and state.get("range_test") is not None:
            self.range_test.load_state_dict(state["range_test"])
        if self.early_stopping is not None and state.get("early_stopping") is not None:
            self.early_stopping.load_state_dict(state["early_stopping"])
        self._spikes_seen = self._spike_count()
        set_rng_state(state["rng"])
        return state["update"]

    def save(self, update: int, *, improved: bool = False) -> None:
        """Rank 0 writes the checkpoint; every rank gathers its state (FSDP2's shards) and waits
        for the file, so no rank runs, or exits, ahead of it."""
        self._read_logs(update)  # the records of the updates a resume will not replay go to disk first
        if self.nonfinite != "skip":  # and the unlogged updates since the last read: last.pt stays good
            self._enforce_nonfinite_policy(update)
        self._enforce_spike_policy(update)
        self.logger.flush()
        state = self.state_dict(update)
        if self.world.is_main:
            self.checkpointer.write(state, update, improved=improved)
        self.world.barrier()
        self._last_saved = update

    def _bad_count(self) -> int:
        """Non-finite events the policy acts on. fp16 overflow skips are routine (the scaler
        is calibrating), so there only a non-finite loss counts."""
        if self.precision.uses_grad_scaler:  # each rank counts its own losses
            return int(self.world.sum(self.step.nonfinite_losses))
        return int(self.step.skipped_updates)  # the global gradient's: the same on every rank

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
        run_dir = self.checkpointer.run_dir
        if self._last_saved is None:
            before = "no checkpoint was written before it"
        else:  # written before the first bad update (save checks first): keep it from the save below
            if self.world.is_main:
                link_atomic(run_dir / "last.pt", run_dir / "last_good.pt")
            before = (f"the last checkpoint before it is {run_dir / 'last_good.pt'} (update {self._last_saved}): "
                      f"resume from it with trainer.resume={run_dir / 'last_good.pt'}, e.g. with a lower "
                      "optimizer.lr and trainer.resume_schedule=override")
        self.save(update)
        raise NonFiniteStop(f"{message}; saved them in {self.checkpointer.last}; {before}")

    def _spike_count(self) -> int:
        spike = self.step.grad_spike
        return 0 if spike is None else int(spike.spikes)

    def _enforce_spike_policy(self, update: int) -> None:
        """``trainer.grad_spike``: a line for new spikes (``log``), or save and stop (``stop``).
        Called where logged values are read."""
        spike = self.step.grad_spike
        if spike is None or spike.action == "skip":
            return
        count = self._spike_count()
        new, self._spikes_seen = count - self._spikes_seen, count
        if new == 0:
            return
        what = (f"{new} gradient-norm spike(s) by update {update} (pre-clip norm above {spike.factor:g} × the median "
                f"of the last {spike.window} updates' norms)")
        if spike.action == "log":
            self.logger.write(f"grad_spike: {what}; applied")
            return
        self.save(update)
        raise GradSpikeStop(f"{what}; they were skipped, and the parameters saved in {self.checkpointer.last}")

    def evaluate(self) -> dict[str, float]:
        """``val/*`` of the model, or with ``trainer.ema_decay`` of the weight EMA, and then
        ``val_raw/*`` of the model's own weights."""
        ema = self.step.ema
        if ema is None:
            return self._evaluate()
        raw = self._evaluate()
        with ema.swapped_in():
            averaged = self._evaluate()
        return {**averaged, **{f"val_raw/{key.removeprefix('val/')}": value for key, value in raw.items()}}

    def _evaluate(self) -> dict[str, float]:
        """Validation over the whole split, in batches of ``VAL_BATCH_MULTIPLE × batch_size`` per
        rank (see :func:`~trainer.data.loading.val_batches`): all ranks run the same number of
        forwards, as FSDP2 needs, and the sums are reduced over them."""
        batches = val_batches(self.dataset, VAL_BATCH_MULTIPLE * self.batch_size, device=self.device,
                              rank=self.world.rank, world_size=self.world.world_size)
        return evaluate(self.model, batches, self.precision, flip=self.flip_test, loss_fn=self.step.loss_fn,
                        world=self.world)

    def _read_logs(self, updates_done: int) -> None:
        """Write the pending logged updates (one host-device sync), then apply the non-finite policy."""
        loss = self.logger.read()
        if loss is not None:
            self._train_loss = loss
            self._enforce_nonfinite_policy(updates_done)
            self._enforce_spike_policy(updates_done)

    def validate(self, updates_done: int) -> dict[str, float]:
        self._read_logs(updates_done)
        metrics = self.evaluate()
        if not metrics:  # no validation split
            return metrics
        self.logger.log_val(updates_done, metrics)
        self._last_val = (updates_done, metrics)
        if self.schedule.plateau is not None:
            self.schedule.observe(metrics, updates_done)
            # A reduction applies from the very next update, not one step late.
            apply_schedule(self.optimizer, self.schedule, updates_done)
        return metrics

    def run(self, start_update: int = 0) -> dict[str, float]:
        """Train from ``start_update`` to ``plan.max_updates``; validate and checkpoint at epoch ends.

        Resuming at update u continues epoch u // updates_per_epoch from the batch it stopped at:
        the epoch's order is re-created from (seed, epoch), so no example is repeated or skipped.
        """
        plan, ckpt = self.plan, self.checkpointer
        apply_schedule(self.optimizer, self.schedule, start_update)
        self.model.train()
        update, metrics = start_update, {}
        # A resumed finished run (a requeued job) trains and validates nothing; a range test that
        # diverged, or a run that stopped early, before its checkpoint is finished, short of max_updates.
        finished = (update >= plan.max_updates
                    or (self.range_test is not None and self.range_test.stopped_early_at is not None)
                    or self.early_stopped)
        with StopOnSignal() as stop:
            for epoch in range(update // plan.updates_per_epoch, plan.num_epochs if not finished else 0):
                update, diverged = self._train_epoch(epoch, update, stop)
                last = update >= plan.max_updates or diverged
                improved = early_stop = False
                if (epoch + 1) % self.val_every_n_epochs == 0 or last:
                    validation = self.validate(update)
                    metrics.update(validation)
                    if self.objective in metrics:
                        improved = ckpt.improves(metrics[self.objective])
                    early_stop = not last and self._early_stop(validation, update)  # the last ends the run anyway
                stopping = self._stopping(stop)
                if ckpt.due_at_epoch_end(epoch, update) or last or improved or stopping or early_stop:
                    self.save(update, improved=improved)
                if stopping:
                    raise Preempted(stopping, update)
                if early_stop:
                    self.logger.write(self.early_stopping.reason())
                    break
                if diverged:
                    self.logger.write(f"range test: loss diverged at update {update}; stopping")
                    break
        if self.objective not in metrics:  # resumed a finished run: report its checkpoint's last validation
            metrics.update(self._last_val[1] if self._last_val[0] == update and self._last_val[1] else self.evaluate())
        if self._train_loss is not None:  # None when a finished run was resumed: nothing trained
            metrics["train/loss"] = self._train_loss
        metrics["updates"] = update
        metrics["skipped_updates"] = int(self.step.skipped_updates)
        if self.step.grad_spike is not None:
            metrics[self.step.grad_spike.tag.removeprefix("train/")] = self._spike_count()
        return metrics

    @property
    def early_stopped(self) -> bool:
        """Whether ``trainer.early_stopping`` ended the run (in this process or before its checkpoint)."""
        return self.early_stopping is not None and self.early_stopping.stopped_at is not None

    def _early_stop(self, validation: dict[str, float], updates_done: int) -> bool:
        """Give a validation's metrics to early stopping; True when the run stops here."""
        if self.early_stopping is None or not validation:
            return False
        monitor = self.early_stopping.monitor
        if monitor not in validation:  # val/acc of a model whose outputs are not class scores
            raise ConfigError("trainer.early_stopping.monitor",
                              f"validation gives {', '.join(validation)}, not {monitor}: monitor one of those")
        return self.early_stopping.observe(validation[monitor], updates_done)

    def _train_epoch(self, epoch: int, update: int, stop: StopOnSignal) -> tuple[int, bool]:
        """Updates ``update..`` of ``epoch``, up to its end or ``max_updates``; checkpoints when due
        within the epoch (its end is the caller's). Returns the updates done and whether the range
        test saw the loss diverge."""
        upe = self.plan.updates_per_epoch
        batches = train_batches(
            self.dataset.train_epoch(self.batch_size, seed=self.seed, epoch=epoch),
            start_batch=(update - epoch * upe) * self.accumulate_grad_batches,
            device=self.device, num_workers=self.loader_workers,
            rank=self.world.rank, world_size=self.world.world_size, accumulate=self.accumulate_grad_batches,
        )
        epoch_end = min((epoch + 1) * upe, self.plan.max_updates)
        while update < epoch_end:
            diverged = self._update(update, epoch, [next(batches) for _ in range(self.accumulate_grad_batches)])
            update += 1
            self.logger.advance()
            if diverged or update == epoch_end:
                return update, diverged  # the epoch end checkpoints this update when due
            if self.checkpointer.due_after_update(update):
                self.save(update)
            stopping = self._stopping(stop)
            if stopping:
                self.save(update)
                raise Preempted(stopping, update)
        return update, False

    def _stopping(self, stop: StopOnSignal) -> str | None:
        """The stop signal's name once any rank has one, on every rank at the same update."""
        if self.world.any(stop.requested is not None):
            return stop.requested or "a signal to another rank"
        return None

    def _update(self, update: int, epoch: int, micro_batches: list[Batch]) -> bool:
        """One optimizer update with its logging; True when the range test says stop."""
        logger = self.logger
        log_now = logger.due(update)
        lrs = applied_lrs(self.optimizer) if log_now else None
        momentum = applied_momentum(self.optimizer) if log_now and self.schedule.momentum_fn is not None else None
        loss, grad_norm = self.step(micro_batches, update)
        if log_now:
            spike = self.step.grad_spike
            logger.record(
                update, lrs=lrs, momentum=momentum, loss=loss, grad_norm=grad_norm, epoch=epoch,
                skipped_updates=self.step.skipped_updates, counters={} if spike is None else {spike.tag: spike.spikes},
            )
        # The range test and a stop/raise policy act on each logged update's values; otherwise
        # they are read in batches, with one sync per read.
        stops = self.nonfinite != "skip" or (self.step.grad_spike is not None and self.step.grad_spike.action == "stop")
        if logger.read_due(update) or (log_now and (self.range_test is not None or stops)):
            self._read_logs(update + 1)
        # The range test logs (and so reads) every update.
        return self.range_test is not None and self.range_test.record(lrs[0], self._train_loss)
