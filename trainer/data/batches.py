"""Batches from tensors held in memory: no DataLoader, whose workers are pure overhead here.

The shuffle order of an epoch is a pure function of (seed, epoch), so a resumed run can re-create
it and continue mid-epoch exactly, and the global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Whole batches in an epoch: the last partial batch is dropped."""
    return num_examples // batch_size


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of example indices for ``epoch`` (CPU, int64)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def epoch_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
    start_batch: int = 0,
) -> Iterator[Batch]:
    """Yield the whole batches of one epoch, from batch index ``start_batch`` on.

    Skipping ``start_batch`` batches does not change which examples the later batches hold.
    """
    n = len(x)
    order = epoch_order(n, seed=seed, epoch=epoch) if shuffle else torch.arange(n)
    order = order.to(x.device)
    for i in range(start_batch, batches_per_epoch(n, batch_size)):
        index = order[i * batch_size : (i + 1) * batch_size]
        yield x.index_select(0, index), y.index_select(0, index)


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """The whole split in order, the last partial batch included."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
