"""Validation: ``val/loss`` and ``val/acc`` over a whole split, summed over the ranks, at the
weights the optimizer means to be evaluated (:func:`at_eval_weights`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from trainer.data import Dataset
from trainer.data.loading import val_batches
from trainer.data.named import IGNORE_INDEX, Batch, align, call_model, is_named, logits_of, targets_of
from trainer.distributed import World
from trainer.models.hf import shifts_labels
from trainer.optim.schedule_free import is_schedule_free
from trainer.training.loss import CrossEntropy, Loss, TokenLoss, model_gets_labels
from trainer.training.precision import Precision

#: Validation batches hold this many training batches: with no activations kept for a backward
#: pass they take less memory than a training step, and fewer, larger batches run faster.
VAL_BATCH_MULTIPLE = 2


def class_scores(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``outputs`` are scores of C >= 2 classes (..., C) for ``targets`` that are class
    indices (...); a single output per example (a regression) is not."""
    integer_targets = not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool
    shapes_fit = outputs.dim() >= 1 and outputs.shape[-1] >= 2 and outputs.shape[:-1] == targets.shape
    return outputs.is_floating_point() and integer_targets and shapes_fit


@dataclass
class Sums:
    """What validation adds up over batches (device tensors: no sync until the end)."""

    loss: torch.Tensor  # fp32
    count: torch.Tensor  # what val/loss is the mean over: targets (the built-in losses) or examples
    correct: torch.Tensor
    scored: torch.Tensor  # targets whose top-1 answer counts for val/acc (not -100)

    @classmethod
    def zeros(cls, device: torch.device) -> Sums:
        return cls(torch.zeros((), device=device), *(torch.zeros((), device=device, dtype=torch.long) for _ in range(3)))

    def metrics(self, world: World) -> dict[str, float]:
        """``val/loss`` and ``val/acc`` of the sums over every rank (one collective, one sync)."""
        sums = torch.stack([self.loss.double(), self.count.double(), self.correct.double(), self.scored.double()])
        loss, count, correct, scored = world.sum(sums).tolist()
        if count == 0:
            return {}
        return {"val/loss": loss / count, **({"val/acc": correct / scored} if scored else {})}


def scored_examples(batch: Batch) -> torch.Tensor | int:
    """What one batch's mean loss weighs in ``val/loss`` under a loss of the user's: its examples,
    those of named tensors with a label that is not -100 (a rank's stand-in for no examples,
    :func:`~trainer.data.named.unscored`, weighs nothing)."""
    targets = targets_of(batch)
    if not is_named(batch):
        return len(targets)
    return (targets != IGNORE_INDEX).reshape(len(targets), -1).any(dim=1).sum()


@torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks versions and views)
def evaluate(
    model: nn.Module, batches: Iterable[Batch], precision: Precision, *, flip: bool = False,
    loss_fn: Loss | None = None, world: World | None = None,
) -> dict[str, float]:
    """``val/loss`` and, when the outputs are class scores and the targets class indices,
    ``val/acc`` (top-1, targets of -100 left out) over every batch; one device sync at the end. An
    empty split gives {}. Under ``world``, each rank passes its own shard of the split and the sums
    (loss, counts, correct answers) are added over the ranks, so every rank gets the same numbers.

    Batches are pairs or named tensors, outputs a tensor or hold ``logits``
    (:mod:`trainer.data.named`). ``val/loss`` with the built-in cross-entropy (``loss_fn`` None or a
    :class:`CrossEntropy`) is the unsmoothed cross-entropy in nats per target that is not -100 (per
    example, or per token for text: a causal language model's labels shifted as it shifts them);
    with ``loss=model``, the model's own loss per counted target; with another loss, that loss's
    mean over the examples (each batch's value weighted by its example count). ``flip=True``
    (test-time augmentation for images) scores each image by the mean of its outputs and its
    horizontal mirror's.
    """
    model_shifts = shifts_labels(model)  # its labels are its inputs, for named batches (see bind_loss)
    was_training = model.training
    model.eval()
    sums = Sums.zeros(next(model.parameters()).device)
    for batch in batches:
        targets, shift = targets_of(batch), model_shifts and is_named(batch)
        scorer = CrossEntropy(shift_labels=shift) if loss_fn is None or isinstance(loss_fn, CrossEntropy) else loss_fn
        with precision.autocast():
            outputs = call_model(model, batch, labels=model_gets_labels(scorer))
            if flip:
                # clone: under CUDA graphs (compile mode reduce-overhead) the second call reuses
                # the first one's output memory.
                outputs = (outputs.clone() + model(batch[0].flip(-1))) / 2
        outputs = outputs.float() if torch.is_tensor(outputs) else outputs  # logits in fp32 (autocast may give bf16)
        if isinstance(scorer, TokenLoss):
            sums.loss += scorer.summed(outputs, targets).float()
            sums.count += scorer.counted(targets)
        else:
            # A batch of no examples (a rank's last) adds nothing: its mean would be NaN.
            examples = scored_examples(batch)
            loss = loss_fn(outputs, targets).float() * examples
            sums.loss += torch.where(examples > 0, loss, 0.0) if torch.is_tensor(examples) else (loss if examples else 0.0)
            sums.count += examples
        logits = logits_of(outputs)
        if logits is not None:
            logits, aligned = align(logits, targets, shift=shift)
            if class_scores(logits, aligned):
                scored = aligned != IGNORE_INDEX
                sums.correct += ((logits.argmax(dim=-1) == aligned) & scored).sum()
                sums.scored += scored.sum()
    model.train(was_training)
    return sums.metrics(world or World())


@contextlib.contextmanager
def at_eval_weights(optimizer: torch.optim.Optimizer, at_x: Callable[[], None] | None = None) -> Iterator[None]:
    """Inside the block the parameters are the ones to evaluate and save: a schedule-free
    optimizer's x (:func:`move_to`), where ``at_x`` runs first (BatchNorm statistics recomputed
    there), and its y again after it. Any other optimizer, or one already at x (an epoch end's
    checkpoint inside its validation's block), is left as it is, at no cost, and ``at_x`` does not run."""
    if not is_schedule_free(optimizer) or not optimizer.param_groups[0]["train_mode"]:
        yield
        return
    move_to(optimizer, "x")
    try:
        if at_x is not None:
            at_x()
        yield
    finally:
        move_to(optimizer, "y")


@torch.no_grad()
def move_to(optimizer: torch.optim.Optimizer, point: str) -> None:
    """A schedule-free optimizer's parameters to ``point``: ``"x"`` (to evaluate and save) or
    ``"y"`` (to train); any other optimizer is left as it is.

    Its ``eval()`` then ``train()`` compute ``y + (1 - 1/beta)(z - y)`` and back, which floating
    point does not undo exactly: going to x keeps y in the optimizer's state (``"y"``, so a
    checkpoint holds it too), and going back copies it, so validating or saving never moves the
    trajectory and a resumed run continues bit for bit. Without a kept y (a fresh run, a
    checkpoint of another making) ``train()`` computes it."""
    if not is_schedule_free(optimizer):
        return
    state, params = optimizer.state, [p for group in optimizer.param_groups for p in group["params"]]
    if point == "x":
        if optimizer.param_groups[0]["train_mode"]:
            for p in params:
                if "z" in state.get(p, {}):
                    state[p]["y"] = p.detach().clone()
            optimizer.eval()
        return
    kept = [(p, state[p].pop("y")) for p in params if "y" in state.get(p, {})]
    optimizer.train()
    for p, y in kept:
        p.copy_(y)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """``model``'s BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Iterable[Batch], precision: Precision) -> None:
    """Replace every BatchNorm's running mean and variance by their plain average over
    ``batches`` at the model's current weights (``torch.optim.swa_utils.update_bn``'s rule:
    momentum None), in training mode, without gradients; the model keeps its mode."""
    layers = batch_norms(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: each batch counts the same
    was_training = model.training
    model.train()
    try:
        for batch in batches:
            with precision.autocast():
                call_model(model, batch)
    finally:
        model.train(was_training)
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


@dataclass(frozen=True)
class Validation:
    """Validation over the whole split, in batches of ``VAL_BATCH_MULTIPLE × batch_size`` per rank
    (see :func:`~trainer.data.loading.val_batches`): all ranks run the same number of forwards, as
    FSDP2 needs, and the sums are reduced over them. Calling it scores the model as it is now."""

    model: nn.Module
    dataset: Dataset
    batch_size: int
    precision: Precision
    device: torch.device
    loss_fn: Loss | None = None
    flip: bool = False  # a source validates on mirrored images too when it says so (``flip_test``)
    world: World = field(default_factory=World)

    def __call__(self) -> dict[str, float]:
        batches = val_batches(self.dataset, VAL_BATCH_MULTIPLE * self.batch_size, device=self.device,
                              rank=self.world.rank, world_size=self.world.world_size)
        return evaluate(self.model, batches, self.precision, flip=self.flip, loss_fn=self.loss_fn, world=self.world)

    def recompute_batch_norm(self, batches: Callable[[], Iterable[Batch]]) -> None:
        """:func:`recompute_batch_norm` over ``batches()``, made only when the model has BatchNorm;
        under several ranks each averages its own batches, then the ranks average their statistics
        (the mean exactly, the variance without the spread between ranks' means), so every rank
        validates, and rank 0 saves, the same ones."""
        layers = batch_norms(self.model)
        if not layers:
            return
        recompute_batch_norm(self.model, batches(), self.precision)
        for layer in layers:
            layer.running_mean.copy_(self.world.mean(layer.running_mean))
            layer.running_var.copy_(self.world.mean(layer.running_var))
