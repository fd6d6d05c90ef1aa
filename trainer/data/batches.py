"""Batches from tensors held in memory: no DataLoader, whose workers are pure overhead here.

The shuffle order of an epoch is a pure function of (seed, epoch), so a resumed run can re-create
it and continue mid-epoch exactly, and the global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Whole batches in an epoch: the last partial batch is dropped."""
    return num_examples // batch_size


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of example indices for ``epoch`` (CPU, int64): a pure function of its arguments."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def epoch_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
    start_batch: int = 0, augment: Augment | None = None,
) -> Iterator[Batch]:
    """Yield one epoch's ``batches_per_epoch(len(x), batch_size)`` whole batches, from ``start_batch`` on.

    Batch i holds examples ``order[i * batch_size : (i + 1) * batch_size]`` of the epoch's order
    (``epoch_order``, or 0..N-1 without shuffle), so skipping ``start_batch`` batches does not
    change which examples the later ones hold. The examples left over are not seen this epoch.
    ``augment(inputs, generator)`` transforms batch i with a generator seeded from (seed, epoch,
    i), so its random crops and flips are re-created exactly on resume too.
    """
    if batch_size < 1 or start_batch < 0:  # a negative start would slice an empty batch, silently
        raise ValueError(f"need batch_size >= 1 and start_batch >= 0, got {batch_size} and {start_batch}")
    n = len(x)
    order = epoch_order(n, seed=seed, epoch=epoch) if shuffle else torch.arange(n)
    order = order.to(x.device)
    for i in range(start_batch, batches_per_epoch(n, batch_size)):
        index = order[i * batch_size : (i + 1) * batch_size]
        inputs = x.index_select(0, index)
        if augment is not None:
            generator = torch.Generator(device=x.device).manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + i)
            inputs = augment(inputs, generator)
        yield inputs, y.index_select(0, index)


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """The whole split in order, the last partial batch included."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
