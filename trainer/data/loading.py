"""Where training batches are gathered: ``data.loader``.

- ``device``: the whole dataset lives on the training device (the GPU, if any) and batches are
  gathered and augmented there, in the training process. No workers, no host-to-device copies:
  what a small model on a fast GPU needs to not be starved. The default.
- ``dataloader``: the dataset stays in host memory; ``data.num_workers`` DataLoader worker
  processes gather and augment batches in parallel with training, into pinned memory, and each
  batch is copied to the device without blocking. For data too large for device memory.

Both paths index the same map-style epoch (batch i is a pure function of (seed, epoch, i)), so
both resume mid-epoch exactly, and on the CPU their batches are identical. Random augmentation and
text windows draw from a generator on the tensors' device, so on a GPU the two paths draw different
(equally reproducible) crops and windows; the order of the examples is the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from trainer.batch_ramp import BatchRamp
from trainer.data.batches import Batch
from trainer.data.map_style import MapDataset, MapEpoch
from trainer.data.named import slice_examples, to_device
from trainer.data.stream import StreamEpoch
from trainer.params import Param

if TYPE_CHECKING:
    from trainer.data.source import Dataset

LOADERS = ("device", "dataloader")
#: Keys every data source takes (conf/data_common.yaml).
PARAMS = {
    "loader": Param("device", "device: whole dataset on the training device; dataloader: worker processes", str,
                    choices=LOADERS),
    "num_workers": Param("auto", "DataLoader worker processes when loader=dataloader (0 = in this process); auto: "
                         "0 for tensors already in memory, else the usable CPUs, at most 4", int, low=0, extra=("auto",)),
}


def rank_batches(
    num_batches: int, *, start_batch: int, rank: int = 0, world_size: int = 1, accumulate: int = 1
) -> list[int]:
    """Which of an epoch's ``num_batches`` batches one rank trains on, from its ``start_batch``-th.

    Update u's global batch is batches ``u·W·A .. (u+1)·W·A - 1`` (W ranks, A accumulated
    micro-batches each): the examples of an update do not depend on how it is split. Rank r takes
    its A batches from ``(u·W + r)·A``. One rank (W = 1) takes every whole update's batches in order.
    """
    if start_batch < 0:
        raise ValueError(f"need start_batch >= 0, got {start_batch}")
    local = range(start_batch, num_batches // (world_size * accumulate) * accumulate)
    return [(j // accumulate * world_size + rank) * accumulate + j % accumulate for j in local]


def ramp_batches(
    ramp: BatchRamp, epoch: int, update: int, *, batch_size: int, rank: int = 0, world_size: int = 1
) -> tuple[list[int], list[int]]:
    """Under a batch ramp: which of ``epoch``'s micro-batches one rank trains on from ``update`` to
    the epoch's end, and how many of them each update takes.

    Update u's global batch is k·W micro-batches (k = its size / (``batch_size`` × W)) from the
    one its epoch's examples trained before it reach; rank r takes its k from the (r·k)-th. As in
    :func:`rank_batches`, the examples of an update do not depend on how it is split.
    """
    first = ramp.samples_before(ramp.epoch_start(epoch))
    indices, counts = [], []
    for u in range(update, ramp.epoch_start(epoch + 1)):
        count = ramp.size(u) // (batch_size * world_size)
        start = (ramp.samples_before(u) - first) // batch_size + rank * count
        indices.extend(range(start, start + count))
        counts.append(count)
    return indices, counts


def train_batches(
    epoch: Sequence[Batch] | MapEpoch | StreamEpoch, *, start_batch: int, device: torch.device, num_workers: int | None,
    rank: int = 0, world_size: int = 1, accumulate: int = 1,
) -> Iterator[Batch]:
    """This rank's batches of ``epoch`` (see :func:`rank_batches`) from its ``start_batch``-th,
    on ``device`` (see :func:`gather`); a stream's (:class:`~trainer.data.stream.StreamEpoch`)
    reads on from its position, in this process."""
    indices = rank_batches(len(epoch), start_batch=start_batch, rank=rank, world_size=world_size, accumulate=accumulate)
    if isinstance(epoch, StreamEpoch):  # a stream has no index: it reads on from its position
        yield from epoch.batches(start_batch, len(indices), device, rank=rank, world_size=world_size)
        return
    yield from gather(epoch, indices, device=device, num_workers=num_workers)


def gather(
    epoch: Sequence[Batch] | MapEpoch, indices: Sequence[int], *, device: torch.device, num_workers: int | None,
) -> Iterator[Batch]:
    """Batches ``indices`` of ``epoch``, in that order, on ``device``.

    ``num_workers=None`` indexes ``epoch`` in this process (its tensors already on ``device``);
    a number runs a DataLoader with that many workers (0 = in this process, still pinned). A
    map-style epoch (:class:`~trainer.data.map_style.MapEpoch`) brings its own loader and workers.
    """
    if isinstance(epoch, MapEpoch):  # map-style data: its own run-long DataLoader and workers
        yield from epoch.batches(indices, device)
        return
    if num_workers is None:
        for i in indices:
            yield epoch[i]
        return
    loader = DataLoader(
        epoch, batch_size=None, sampler=indices, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    for batch in loader:
        yield to_device(batch, device, non_blocking=True)


@dataclass(frozen=True)
class TrainBatches:
    """This rank's micro-batches of every epoch, from any update: ``epoch(e, update)`` yields one
    list of micro-batches per update, from ``update`` (which lies in epoch ``e``): ``accumulate``
    of them, or under a batch ``ramp`` as many as that update's size takes.
    ``num_workers`` None: batches gathered on the device; else DataLoader workers."""

    dataset: Dataset
    batch_size: int
    seed: int
    device: torch.device
    updates_per_epoch: int
    accumulate: int = 1
    num_workers: int | None = None
    rank: int = 0
    world_size: int = 1
    ramp: BatchRamp | None = None

    def epoch(self, epoch: int, update: int) -> Iterator[list[Batch]]:
        data = self.dataset.train_epoch(self.batch_size, seed=self.seed, epoch=epoch)
        if self.ramp is not None:
            indices, counts = ramp_batches(self.ramp, epoch, update, batch_size=self.batch_size, rank=self.rank,
                                           world_size=self.world_size)
            batches = gather(data, indices, device=self.device, num_workers=self.num_workers)
            for count in counts:
                yield list(itertools.islice(batches, count))
            return
        batches = train_batches(
            data, start_batch=(update - epoch * self.updates_per_epoch) * self.accumulate, device=self.device,
            num_workers=self.num_workers, rank=self.rank, world_size=self.world_size, accumulate=self.accumulate,
        )
        while len(update_batches := list(itertools.islice(batches, self.accumulate))) == self.accumulate:
            yield update_batches

    def first(self, epoch: int, count: int) -> Iterator[Batch]:
        """The first ``count`` micro-batches this rank trains on in ``epoch`` (fewer if it has fewer)."""
        start = epoch * self.updates_per_epoch if self.ramp is None else self.ramp.epoch_start(epoch)
        return itertools.islice(itertools.chain.from_iterable(self.epoch(epoch, start)), count)


def val_batches(
    dataset: Dataset, batch_size: int, *, device: torch.device, rank: int = 0, world_size: int = 1
) -> Iterator[Batch]:
    """This rank's slice of each validation batch of ``batch_size × world_size`` examples, in
    order, on ``device``: the ``rank``-th ``batch_size`` of each, short or empty at the end, so
    the ranks together score every example once and all run the same number of forwards.

    In-memory splits are sliced where they lie; a map-style split reads only this rank's examples.
    """
    if isinstance(dataset, MapDataset):
        batches = dataset.val_batches(batch_size, rank=rank, world_size=world_size)
    else:
        first, stop = rank * batch_size, (rank + 1) * batch_size
        batches = (slice_examples(batch, first, stop) for batch in dataset.val_batches(batch_size * world_size))
    # A split in host memory (data.loader=dataloader, map-style data) is copied over; one on the
    # device already is not.
    for batch in batches:
        yield to_device(batch, device)
