"""One optimizer update: the one place that owns the step order.

autocast forward -> (scaled) backward -> unscale -> clip -> the controls judge the norm (a spike
may veto the update) -> optimizer step -> the controls see what was applied (the weight EMA) ->
schedule update -> zero_grad.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from trainer.controls import Controls, Stop, Update
from trainer.data.named import Batch, call_model, is_named, targets_of
from trainer.distributed import World
from trainer.optim.groups import trainable_parameters
from trainer.schedules.schedule import Schedule, apply_schedule
from trainer.training.clock import TrainingClock
from trainer.training.counts import TokenCount
from trainer.training.loss import Loss, TokenLoss, model_gets_labels
from trainer.training.precision import Precision


class TrainStep:
    """One optimizer update over ``accumulate_grad_batches`` micro-batches (on each rank).

    ``model`` is the module to call: under DDP its wrapper, which averages the gradients over the
    ranks in the backward of the last micro-batch (the others skip the all-reduce), so clipping
    and the finiteness check see the same global gradient on every rank. ``clock``: the training
    clock a schedule in seconds reads its t from (and a budget in seconds its end), or None;
    ``tokens``: likewise the tokens of padded rows, counted from each update's batches, or None.
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
        controls: Controls | None = None,
        clock: TrainingClock | None = None,
        tokens: TokenCount | None = None,
    ) -> None:
        self.world, self.clock, self.tokens = world or World(), clock, tokens
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.controls = controls or Controls([])
        self.precision, self.loss_fn, self.clip_grad_norm = precision, loss_fn, clip_grad_norm
        self.params = list(trainable_parameters(optimizer))
        # Under FSDP2 a rank's scaler sees only its own gradient shard, so ranks could skip
        # different updates: there the global norm decides, on the host (one sync per update).
        self.sharded = self.world.strategy == "fsdp"
        device = self.params[0].device
        self.scaler = torch.amp.GradScaler(device.type, enabled=False) if self.sharded else precision.grad_scaler()

    def __call__(self, micro_batches: Sequence[Batch], update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run update ``update``; returns its mean loss and pre-clip gradient norm as device tensors.

        An update whose gradients are not finite (a NaN/inf loss, or an fp16 overflow) is skipped
        by the GradScaler, as is one a control vetoes (a gradient-norm spike); it still uses up its
        schedule slot, so the schedule advances exactly once per update, skipped or not.
        """
        total_loss, tokens = self._backward(micro_batches)
        # Unscale before clipping: under fp16 the gradients are multiplied by the loss scale, and
        # clipping (or logging) scaled gradients would compare the wrong norm with max_norm.
        self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm, foreach=True)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        if self.sharded:  # a DTensor: the norm over every rank's shards
            grad_norm = grad_norm.full_tensor()
        finite = torch.isfinite(grad_norm)
        veto = self.controls.veto(grad_norm)  # judged on the pre-clip norm
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
        self.controls.after_step(Update(total_loss, grad_norm, finite, applied))
        # The schedule advances once per optimizer update (never per micro-batch), right after
        # the step that used the current LR, so update t always runs with the schedule's LR at t.
        if self.clock is not None:  # in seconds: t of the next update is the clock's reading now
            self.clock.stamp(update + 1)
        if self.tokens is not None:  # the host reads the update's token count here, after its step is queued
            self.tokens.add(update, int(tokens))
        apply_schedule(self.optimizer, self.schedule, update + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, grad_norm

    def begin(self, update: int) -> None:
        """Before this process's first update, ``update``: the clock starts, the token count goes on
        from there, and that update's LR is set."""
        if self.clock is not None:
            self.clock.start()
        if self.tokens is not None:
            self.tokens.begin(update)
        apply_schedule(self.optimizer, self.schedule, update)

    def spent(self) -> Stop | None:
        """The run's end once a budget counted as it goes (``trainer.max_time``, ``trainer.max_tokens``
        of padded rows) is spent: never without one."""
        return next((stop for count in (self.clock, self.tokens) if count is not None and (stop := count.spent())), None)

    def _backward(self, micro_batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward every micro-batch; returns the update's loss and, when the run counts
        them, its tokens over every rank (device tensors).

        Pairs, and named batches under a loss of the user's, weigh each micro-batch alike: each
        loss is divided by their count, so the summed gradient is the mean over the update and the
        LR means the same at any accumulation. A token loss (:class:`~trainer.training.loss.TokenLoss`)
        on named batches weighs every counted target alike instead: each micro-batch's summed loss
        is divided by the targets of the whole global batch, counted over every micro-batch and rank
        before the first backward (one all-reduce per update, which also sums the tokens a
        :class:`~trainer.training.counts.TokenCount` counts), not the mean of micro-batch means.
        """
        count = len(micro_batches)
        gets_labels = model_gets_labels(self.loss_fn)
        scale, tokens = self._global_counts(micro_batches)
        total_loss = None
        for index, batch in enumerate(micro_batches):
            with self.world.gradient_sync(self.model, enabled=index == count - 1):
                with self.precision.autocast():
                    outputs = call_model(self.model, batch, labels=gets_labels)
                    if scale is not None:
                        loss = self.loss_fn.summed(outputs, targets_of(batch)) * scale
                    else:
                        loss = self.loss_fn(outputs, targets_of(batch))
                if scale is None and count > 1:
                    loss = loss / count
                self.scaler.scale(loss).backward()
            total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
        return total_loss, tokens

    def _global_counts(self, micro_batches: Sequence[Batch]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(W / counted targets of the global batch, tokens of the global batch), summed over the
        ranks in one all-reduce; each None when not wanted. The scale is for a token loss on named
        batches: DDP averages the ranks' gradients, so each rank's summed loss is scaled by W over the
        global count; the ranks' logged losses then average to the global mean per target. An update
        with no counted target (all -100) has a zero loss and gradient."""
        weighs = isinstance(self.loss_fn, TokenLoss) and is_named(micro_batches[0])
        counts = [torch.stack([self.loss_fn.counted(targets_of(batch)) for batch in micro_batches]).sum()] if weighs else []
        if self.tokens is not None:
            counts.append(TokenCount.tokens_of(micro_batches))
        if not counts:
            return None, None
        summed = self.world.sum(torch.stack(counts))
        scale = self.world.world_size / summed[0].clamp(min=1) if weighs else None
        return scale, summed[-1] if self.tokens is not None else None

    def state_dict(self) -> dict:
        """The loss scale, and the precision it belongs to; the training clock and the token count,
        when the run has them."""
        state = {"precision": self.precision.name, "scaler": self.scaler.state_dict()}
        if self.clock is not None:
            state["clock"] = self.clock.state_dict()
        if self.tokens is not None:
            state["tokens"] = self.tokens.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        # A loss scale carries over only between runs of the same precision: fp16's dynamic scale
        # means nothing to bf16's unit scaler (and the CPU's disabled one saves an empty state).
        if state["precision"] == self.precision.name and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.clock is not None:
            self.clock.load_state_dict(state.get("clock"))
        if self.tokens is not None:
            self.tokens.load_state_dict(state.get("tokens"))


@contextlib.contextmanager
def vetoing(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, veto: torch.Tensor | None) -> Iterator[None]:
    """Make ``scaler.step(optimizer)`` skip the step when ``veto`` (a device bool) is set, on the
    device, as it skips non-finite gradients: the veto is added to the inf flags that
    ``scaler.unscale_`` recorded (what the fused optimizers read), and taken out again before
    ``scaler.update``, so fp16's loss scale does not back off for a spike.
    """
    if veto is None:
        yield
        return
    # GradScaler keeps these per optimizer, per device; there is no public way to add a flag.
    flags = list(scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values())
    vetoes = [veto.to(flag.device, flag.dtype) for flag in flags]
    torch._foreach_add_(flags, vetoes)
    try:
        yield
    finally:
        torch._foreach_sub_(flags, vetoes)
