"""What a batch is, what the model makes of it, and how it moves: the one place that knows both
kinds of batch.

A batch is an ``(input, target)`` pair of tensors, or a mapping of named tensors (the Hugging Face
convention: ``input_ids``, ``attention_mask``, ``labels``, ...). A pair's input is the model's one
positional argument and its target the loss's; a mapping goes to the model as keyword arguments
and its ``labels`` are the targets (ignored positions hold :data:`IGNORE_INDEX`). A model's
outputs are a tensor (the logits), a ``ModelOutput`` or dict with a ``logits`` entry, or any
object with a ``logits`` attribute (a dataclass).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import nn

#: A pair ``(input, target)``, or named tensors (``labels`` the targets).
Batch = Union[tuple[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]
#: The key of a named batch that holds the targets.
LABELS = "labels"
#: A target that is not scored (cross-entropy's ignore_index, Hugging Face's padding label).
IGNORE_INDEX = -100


def is_named(batch: Batch) -> bool:
    """Whether ``batch`` is a mapping of named tensors (else an (input, target) pair)."""
    return isinstance(batch, Mapping)


def targets_of(batch: Batch) -> torch.Tensor:
    """The batch's targets: a pair's second tensor, a mapping's ``labels``."""
    return batch[LABELS] if isinstance(batch, Mapping) else batch[1]


def has_token_rows(batch: Batch) -> bool:
    """Whether ``batch`` holds named token sequences: a mapping with ``input_ids``."""
    return isinstance(batch, Mapping) and "input_ids" in batch


def tokens_in(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The token positions a batch of named token sequences (:func:`has_token_rows`) has the model
    read (an integer device tensor, no sync): its ``attention_mask`` ones (padding left out), else
    every ``input_ids`` position."""
    mask, ids = batch.get("attention_mask"), batch["input_ids"]
    return mask.count_nonzero() if mask is not None else torch.tensor(ids.numel(), device=ids.device)


def call_model(model: nn.Module, batch: Batch, *, labels: bool = True) -> Any:
    """``model``'s outputs on ``batch``: ``model(input)`` for a pair, ``model(**batch)`` for named
    tensors (without ``labels`` when ``labels`` is false: a loss that scores the logits itself
    spares the model its own)."""
    if isinstance(batch, Mapping):
        return model(**(batch if labels else {k: v for k, v in batch.items() if k != LABELS}))
    return model(batch[0])


def logits_of(outputs: Any) -> torch.Tensor | None:
    """The logits in a model's outputs: a tensor itself, a mapping's (``ModelOutput``, dict) or an
    object's ``logits``; None when there are none to find."""
    if torch.is_tensor(outputs):
        return outputs
    found = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    return found if torch.is_tensor(found) else None


def loss_of(outputs: Any) -> torch.Tensor | None:
    """The loss a model computed itself (a Hugging Face model given ``labels``), or None."""
    found = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    return found if torch.is_tensor(found) else None


def to_device(batch: Batch, device: torch.device, *, non_blocking: bool = False) -> Batch:
    """``batch`` with every tensor on ``device`` (pinned host memory copies without blocking)."""
    if isinstance(batch, Mapping):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
    inputs, targets = batch
    return inputs.to(device, non_blocking=non_blocking), targets.to(device, non_blocking=non_blocking)


def slice_examples(batch: Batch, start: int, stop: int) -> Batch:
    """Examples ``start..stop-1`` of ``batch``, of the same kind (none: a batch of no examples)."""
    if isinstance(batch, Mapping):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[0][start:stop], batch[1][start:stop]


def unscored(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with every label ignored: it stands in for a batch of no examples, which a model
    such as Hugging Face's cannot take, so that a rank runs its forward and scores nothing."""
    return {**batch, LABELS: torch.full_like(batch[LABELS], IGNORE_INDEX)}


def describe(batch: Batch) -> str:
    """The batch's inputs in words for a message: ``of shape (2, 8)``, or
    ``{input_ids: (2, 8), attention_mask: (2, 8)}``."""
    if isinstance(batch, Mapping):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in batch.items() if k != LABELS) + "}"
    return f"of shape {tuple(batch[0].shape)}"


def align(logits: torch.Tensor, targets: torch.Tensor, *, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the targets they score. ``shift``: the targets are the inputs themselves (a
    causal language model's labels, as Hugging Face's are), so position t's logits score target t + 1
    and the last position scores nothing."""
    if shift:
        return logits[..., :-1, :], targets[..., 1:]
    return logits, targets
