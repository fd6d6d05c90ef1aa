"""Batches from tensors held in memory, by index: batch i of an epoch is a pure function of
(seed, epoch, i).

The shuffle order of an epoch is a pure function of (seed, epoch) and every random augmentation
draws from a generator seeded with (seed, epoch, i), so a resumed run re-creates any batch and
continues mid-epoch exactly, and the global RNG is never touched. An epoch is a map-style
sequence of batches, so the same object serves the in-memory path (index it in the training
process) and the DataLoader path (workers index it; see ``trainer.data.loading``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from trainer.data.named import Batch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Whole batches in an epoch: the last partial batch is dropped."""
    return num_examples // batch_size


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of example indices for ``epoch`` (CPU, int64): a pure function of its arguments."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def stream_seed(*, seed: int, epoch: int, index: int) -> int:
    """The seed of random stream ``index`` (a batch, or an example) of ``epoch``."""
    return (seed * 1_000_003 + epoch) * 1_000_033 + index


def batch_generator(device: torch.device, *, seed: int, epoch: int, batch: int) -> torch.Generator:
    """A generator on ``device`` for the random choices of batch ``batch`` of ``epoch``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed=seed, epoch=epoch, index=batch))


@dataclass(frozen=True)
class ExampleBatches:
    """One epoch of whole batches of examples ``(x[k], y[k])``; ``len`` = batches_per_epoch.

    Batch i holds examples ``order[i * batch_size : (i + 1) * batch_size]``, so skipping batches
    does not change which examples the later ones hold. ``augment(inputs, generator)`` transforms
    batch i with :func:`batch_generator` for (seed, epoch, i).
    """

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    order: torch.Tensor  # on x's device
    seed: int
    epoch: int
    augment: Augment | None = None

    def __len__(self) -> int:
        return batches_per_epoch(len(self.x), self.batch_size)

    def __getitem__(self, i: int) -> Batch:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of an epoch of {len(self)}")
        index = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        inputs = self.x.index_select(0, index)
        if self.augment is not None:
            generator = batch_generator(self.x.device, seed=self.seed, epoch=self.epoch, batch=i)
            inputs = self.augment(inputs, generator)
        return inputs, self.y.index_select(0, index)


def example_epoch(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
    augment: Augment | None = None,
) -> ExampleBatches:
    """``epoch``'s batches in the order of ``epoch_order`` (or 0..N-1 without shuffle)."""
    if batch_size < 1:
        raise ValueError(f"need batch_size >= 1, got {batch_size}")
    n = len(x)
    order = epoch_order(n, seed=seed, epoch=epoch) if shuffle else torch.arange(n)
    return ExampleBatches(x, y, batch_size, order.to(x.device), seed, epoch, augment)


def shard_ranges(num_examples: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[range]:
    """Rank ``rank``'s examples of each batch of ``batch_size × world_size`` of a split, in order:
    the ``rank``-th ``batch_size`` of each (short or empty at the end). The ranks together cover
    every example once, and each gets ceil(num_examples / (batch_size × world_size)) ranges."""
    for start in range(0, num_examples, batch_size * world_size):
        first = min(start + rank * batch_size, num_examples)
        yield range(first, min(first + batch_size, num_examples))


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """The whole split in order, the last partial batch included."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
