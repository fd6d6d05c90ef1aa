"""The training loss: ``loss=cross_entropy`` (the default), ``loss=model`` (the model's own) or any
callable named by ``loss._target_``.

Every loss is called as ``loss(outputs, targets)`` and returns the mean over the batch. On batches
of named tensors the two built-in ones are also *token losses* (:class:`TokenLoss`): they say how
many targets a batch has (``counted``) and their summed loss (``summed``), so the training step can
weight every counted target of the global batch alike (:mod:`trainer.training.step`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from trainer.data.named import IGNORE_INDEX, align, logits_of, loss_of
from trainer.models.hf import shifts_labels

#: ``loss``: (outputs, targets) -> a scalar tensor to minimise, the mean over the batch.
Loss = Callable[[Any, torch.Tensor], torch.Tensor]


@runtime_checkable
class TokenLoss(Protocol):
    """A loss that can be summed over a batch's counted targets: weighted by tokens, not batches."""

    def counted(self, targets: torch.Tensor) -> torch.Tensor:
        """How many of ``targets`` the loss scores (an integer device tensor, no sync)."""

    def summed(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The loss summed over the counted targets."""


def model_gets_labels(loss_fn: Loss) -> bool:
    """Whether a batch's ``labels`` go to the model (all but the built-in cross-entropy, which
    scores the logits itself: a Hugging Face model given labels would compute its loss as well)."""
    return getattr(loss_fn, "model_gets_labels", True)


@dataclass(frozen=True)
class CrossEntropy:
    """``loss=cross_entropy`` (the default): mean cross-entropy (nats) over every target that is
    not -100: (N, C) logits with (N,) classes, or a language model's (B, T, V) logits with (B, T)
    next tokens (per predicted token). ``outputs`` are the logits, or hold them (``.logits``).
    ``label_smoothing`` comes from ``trainer.label_smoothing``; ``shift_labels`` is set by
    :func:`bind_loss` for a causal language model, whose labels are its inputs (Hugging Face's):
    position t's logits score label t + 1."""

    label_smoothing: float = 0.0
    shift_labels: bool = False
    model_gets_labels = False  # a class attribute: not a field, not a key

    def _aligned(self, outputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(outputs)
        if logits is None:
            raise TypeError(f"the model returned a {type(outputs).__name__} without logits")
        # fp32 logits: outside autocast (validation) a bf16 log-softmax would lose precision.
        logits, targets = align(logits.float(), targets, shift=self.shift_labels)
        return logits.flatten(0, -2), targets.flatten()

    def __call__(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = self._aligned(outputs, targets)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)

    def counted(self, targets: torch.Tensor) -> torch.Tensor:
        return ((targets[..., 1:] if self.shift_labels else targets) != IGNORE_INDEX).sum()

    def summed(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = self._aligned(outputs, targets)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing,
                               reduction="sum")


@dataclass(frozen=True)
class ModelLoss:
    """``loss=model``: the loss the model computes itself from the batch's ``labels`` (a Hugging Face
    model's ``outputs.loss``). Taken as the mean over the batch's counted targets (the labels that
    are not -100, shifted as the model shifts them), as Hugging Face's losses are, so its sum is that
    mean times their count and every target of an update weighs the same."""

    shift_labels: bool = False

    def __call__(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        loss = loss_of(outputs)
        if loss is None:
            raise TypeError(f"the model returned a {type(outputs).__name__} without a loss: give it labels, or use "
                            "loss=cross_entropy")
        return loss

    def counted(self, targets: torch.Tensor) -> torch.Tensor:
        return CrossEntropy(shift_labels=self.shift_labels).counted(targets)

    def summed(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        # A batch with no counted target (all -100: a rank's empty last validation batch, a prompt
        # truncated before its answer) adds nothing; Hugging Face's mean over none is NaN.
        counted = self.counted(targets)
        return torch.where(counted > 0, self(outputs, targets) * counted, 0.0)


def bind_loss(loss_fn: Loss, model: nn.Module, *, named: bool) -> Loss:
    """``loss_fn`` for ``model`` on batches of named tensors (``named``) or pairs: the built-in losses
    learn whether the labels are shifted inside the model (:func:`~trainer.models.hf.shifts_labels`),
    which holds for named batches only (Hugging Face's convention: the labels are the inputs); a
    pair's targets are the next tokens already. Any other loss is the user's, as it is."""
    if isinstance(loss_fn, (CrossEntropy, ModelLoss)):
        return replace(loss_fn, shift_labels=named and shifts_labels(model))
    return loss_fn
