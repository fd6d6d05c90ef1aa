"""Map-style datasets: any ``torch.utils.data.Dataset`` of ``(input, target)`` pairs, resumed exactly.

``data=torch_dataset`` builds ``data.train`` and ``data.val`` from their ``_target_``;
``data=image_folder`` is such a config for torchvision's ``ImageFolder``. Batches come from one
``DataLoader`` per split that lives for the whole run (``data.num_workers`` persistent workers,
pinned memory on CUDA), and three things make a resumed run draw exactly the batches of the run
that never stopped:

- the order of an epoch is a pure function of (seed, epoch): :class:`EpochSampler` permutes with
  the same :func:`~trainer.data.batches.epoch_order` as the in-memory data, and cuts it into the
  same micro-batches;
- each rank reads the micro-batches :func:`~trainer.data.loading.rank_batches` gives it (its slice
  of every global batch, as for the in-memory data), from the one a resumed epoch stopped at;
- example k of epoch e is read with torch's and Python's generators seeded from (seed, e, k), so a
  random crop does not depend on which worker or rank reads it, nor on what it read before.

Validation reads only this rank's slice of each validation batch (:meth:`MapDataset.val_batches`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset, default_collate
from torch.utils.data import Dataset as TorchDataset

from trainer.data.batches import Batch, batches_per_epoch, epoch_order, shard_ranges, stream_seed
from trainer.data.source import ExampleDataset
from trainer.errors import ConfigError, one_line
from trainer.params import Param

#: What the sampler hands a worker: (epoch, the example indices of one batch).
BatchKey = tuple[int, list[int]]

#: ``data=torch_dataset``'s keys besides ``name`` and :data:`TARGET_NODES` (conf/data/torch_dataset.yaml).
PARAMS = {
    "loader": Param("dataloader", "map-style data is read by DataLoader workers", str, choices=("dataloader",)),
    "batch_size": Param(64, "examples per micro-batch", int, low=1),
    "num_classes": Param(None, "classes when the training split has no classes attribute", int, low=1, extra=(None,)),
}
#: ``data=image_folder``'s own keys, which its split targets read (conf/data/image_folder.yaml).
IMAGE_FOLDER_PARAMS = {
    "train_dir": Param(None, "folder of class folders to train on (required)", str, extra=(None,)),
    "val_dir": Param(None, "folder of class folders to validate on (required)", str, extra=(None,)),
    "image_size": Param(224, "side of the square crop the model sees, in pixels", int, low=1),
    "augment": Param(True, "random-resized crop + flip for training; false: as validation", bool),
}
#: ``_target_`` nodes (and lists of them), checked by their targets' signatures, not declared here.
TARGET_NODES = ("train", "val", "train_transform", "val_transform")


class EpochSampler(Sampler[BatchKey]):
    """Chosen micro-batches of one epoch, as (epoch, example indices).

    Micro-batch i of an epoch holds examples ``order[i * batch_size : (i + 1) * batch_size]`` with
    ``order = epoch_order(num_examples, seed, epoch)``, as in the in-memory data
    (:class:`~trainer.data.batches.ExampleBatches`); the last partial one is dropped. Which of them
    the next ``iter(sampler)`` yields, in which order, is set per epoch by :meth:`set_epoch`.
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int) -> None:
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.epoch, self.chosen = 0, list(range(self.num_batches))

    @property
    def num_batches(self) -> int:
        """Whole micro-batches in an epoch."""
        return batches_per_epoch(self.num_examples, self.batch_size)

    def __len__(self) -> int:
        """Micro-batches the next ``iter(sampler)`` yields."""
        return len(self.chosen)

    def set_epoch(self, epoch: int, batches: Sequence[int]) -> None:
        """What the next ``iter(sampler)`` yields: micro-batches ``batches`` of ``epoch``, in that order."""
        chosen = list(batches)
        if any(not 0 <= i < self.num_batches for i in chosen):
            raise ValueError(f"need micro-batches in 0..{self.num_batches - 1}, got {chosen}")
        self.epoch, self.chosen = epoch, chosen

    def __iter__(self) -> Iterator[BatchKey]:
        epoch, size = self.epoch, self.batch_size
        order = epoch_order(self.num_examples, seed=self.seed, epoch=epoch)
        return ((epoch, order[i * size : (i + 1) * size].tolist()) for i in self.chosen)


class _RestoredRNG:
    """Saves torch's CPU and Python's generator states and puts them back on exit: reading
    examples in the training process must not move the generators dropout and init draw from."""

    def __enter__(self) -> None:
        self._torch, self._python = torch.get_rng_state(), random.getstate()

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._torch)
        random.setstate(self._python)


def read_examples(examples: TorchDataset, indices: Sequence[int], *, seed: int, epoch: int) -> list[Any]:
    """``examples[k]`` for each k, each read with torch's and Python's generators seeded from
    (seed, epoch, k); the caller's generator states are left as they were."""
    items = []
    with _RestoredRNG():
        for k in indices:
            example_seed = stream_seed(seed=seed, epoch=epoch, index=k)
            torch.manual_seed(example_seed)
            random.seed(example_seed)
            items.append(examples[k])
    return items


@dataclass(frozen=True)
class SeededBatches(TorchDataset):
    """The training split indexed by :data:`BatchKey`: one collated batch per key (what a
    ``DataLoader`` worker computes)."""

    examples: TorchDataset
    seed: int

    def __getitem__(self, key: BatchKey) -> Batch:
        epoch, indices = key
        return default_collate(read_examples(self.examples, indices, seed=self.seed, epoch=epoch))


@dataclass(frozen=True)
class ValSlices(TorchDataset):
    """The validation split indexed by lists of example indices: one collated batch per list, each
    example k read with generators seeded from k alone (the same numbers at any world size, worker
    count or epoch). An empty list gives a batch of no examples (item 0's shape and type), so every
    rank runs as many forwards as the others."""

    examples: TorchDataset

    def __getitem__(self, indices: list[int]) -> Batch:
        items = read_examples(self.examples, indices or [0], seed=0, epoch=0)
        inputs, targets = default_collate(items)
        return (inputs, targets) if indices else (inputs[:0], targets[:0])


def check_pair(item: Any, key: str) -> tuple[torch.Tensor, Any]:
    """``item`` as (input tensor, target); a ConfigError at ``key`` when it is not such a pair."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ConfigError(key, f"item 0 is a {type(item).__name__}, not an (input, target) pair")
    inputs, target = item
    if not torch.is_tensor(inputs):
        raise ConfigError(
            key, f"item 0's input is a {type(inputs).__name__}, not a tensor (an image needs a ToTensor transform)"
        )
    return inputs, target


#: ``num_workers=auto``'s most workers: past about 4 a small model's loader is no longer the bottleneck.
MAX_AUTO_WORKERS = 4


def worker_count(setting: int | str, data: object = None) -> int:
    """``data.num_workers``: a number as it is; ``auto`` = 0 when ``data`` is tensors already in
    memory (a ``TensorDataset``, or a split of ``ExampleDataset``: workers would only copy them),
    else as many as the CPUs this process may use, at most :data:`MAX_AUTO_WORKERS` (DataLoader
    warns past the CPUs)."""
    if setting != "auto":
        return int(setting)
    if isinstance(data, (TensorDataset, ExampleDataset)):
        return 0
    return min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0)))


@dataclass
class MapDataset:
    """Train and (optional) validation splits of a map-style dataset, read by DataLoaders.

    ``input_shape`` is one example's input shape; ``num_classes`` the classes (or vocabulary).
    ``val=None`` trains without validation.
    """

    train: TorchDataset
    val: TorchDataset | None
    num_classes: int | None  # None: a regression, or a model given rather than built
    input_shape: tuple[int, ...]
    num_workers: int
    pin_memory: bool = False
    _loaders: dict[tuple, tuple[DataLoader, EpochSampler | None]] = field(default_factory=dict, repr=False)

    @property
    def num_train(self) -> int:
        return len(self.train)

    def to(self, device: torch.device) -> MapDataset:
        """Itself: the examples stay in host memory (batches are pinned when ``pin_memory``)."""
        return self

    def _loader(
        self, dataset: TorchDataset, batch_size: int | None, sampler: Iterable[Any] | None, seed: int
    ) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            # Our own generator: each new iterator draws a base seed from it, which would
            # otherwise move the global generator dropout draws from.
            generator=torch.Generator().manual_seed(seed),
        )

    def train_epoch(self, batch_size: int, *, seed: int, epoch: int) -> MapEpoch:
        """``epoch``'s micro-batches of ``batch_size`` (see :class:`EpochSampler`)."""
        key = ("train", batch_size, seed)
        if key not in self._loaders:
            sampler = EpochSampler(len(self.train), batch_size, seed=seed)
            self._loaders[key] = self._loader(SeededBatches(self.train, seed), None, sampler, seed), sampler
        loader, sampler = self._loaders[key]
        return MapEpoch(loader, sampler, epoch)

    def val_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """This rank's slice of each validation batch of ``batch_size × world_size`` examples in
        order (see :func:`~trainer.data.batches.shard_ranges`): every example once over the ranks,
        read by this rank alone. Nothing without a validation split."""
        if self.val is None:
            return iter(())
        key = ("val", batch_size, rank, world_size)
        if key not in self._loaders:
            slices = [list(r) for r in shard_ranges(len(self.val), batch_size, rank=rank, world_size=world_size)]
            self._loaders[key] = self._loader(ValSlices(self.val), None, slices, 0), None
        return iter(self._loaders[key][0])

    def first_batch(self, size: int = 2) -> Batch:
        """The first ``size`` training examples as a batch, read in this process (the pre-training check)."""
        count = min(size, len(self.train))
        return default_collate(read_examples(self.train, range(count), seed=0, epoch=0))


@dataclass(frozen=True)
class MapEpoch:
    """One epoch of a :class:`MapDataset`: ``len`` micro-batches, read by the split's DataLoader."""

    loader: DataLoader
    sampler: EpochSampler
    epoch: int

    def __len__(self) -> int:
        """Whole micro-batches in the epoch (over all ranks)."""
        return self.sampler.num_batches

    def batches(self, indices: Sequence[int], device: torch.device) -> Iterator[Batch]:
        """Micro-batches ``indices`` of the epoch, in that order, on ``device`` (copied without
        blocking from pinned memory)."""
        self.sampler.set_epoch(self.epoch, indices)
        for inputs, targets in self.loader:
            yield inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def build_map_dataset(cfg: Any, *, pin_memory: bool) -> MapDataset:
    """``data.train`` / ``data.val`` from their ``_target_`` (``data.val: null``: no validation).

    ``num_classes``: the training split's ``classes`` attribute, else ``data.num_classes``.
    Item 0 of each split must be an (input tensor, target) pair: checked here, before training.
    """
    from trainer.components import build

    if cfg.get("train") is None:
        raise ConfigError("data.train", "missing: name the training split, e.g. data.train._target_=mypkg.MyDataset")
    train = build(cfg.train, "data.train")
    val = None if cfg.get("val") is None else build(cfg.val, "data.val")
    return map_dataset(train, val, num_classes=cfg.get("num_classes"), num_workers=worker_count(cfg.num_workers, train),
                       pin_memory=pin_memory)


def map_dataset(
    train: TorchDataset, val: TorchDataset | None, *, num_classes: int | None, num_workers: int, pin_memory: bool
) -> MapDataset:
    """A :class:`MapDataset` of datasets already built (``trainer.fit`` passes the caller's)."""
    first_inputs = []
    for split, key in ((train, "data.train"), (val, "data.val")):
        if split is None:
            continue
        if not hasattr(split, "__getitem__") or not hasattr(split, "__len__"):
            raise ConfigError(key, f"a {type(split).__name__} is not a map-style dataset (it needs __len__ and __getitem__)")
        if len(split) == 0:
            raise ConfigError(key, f"the {type(split).__name__} holds no examples")
        try:
            item = read_examples(split, [0], seed=0, epoch=0)[0]
        except Exception as error:  # a user's __getitem__ (or transform) that fails on its first item
            raise ConfigError(key, f"reading item 0 failed: {one_line(error)}") from None
        first_inputs.append(check_pair(item, key)[0])
    classes = getattr(train, "classes", None)
    if classes is not None:
        num_classes = len(classes)
    # None: a regression, or a model that is given rather than built; a builder that takes
    # num_classes asks for it (trainer.models.build_model).
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError("data.num_classes", f"got {num_classes!r}; expected a whole number >= 1")
    return MapDataset(train, val, num_classes, tuple(first_inputs[0].shape), num_workers, pin_memory)
