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

Examples that cannot be used are named, never a traceback: item 0 of each split is checked before
training (a pair, an input tensor of the same shape in both splits, a label in range); later items
are checked by :class:`SplitReader` as each micro-batch is read, and one that fails is a
:class:`~trainer.errors.DataError` naming its split, index and file, or with ``data.on_error=skip``
is left out of its micro-batch and counted (``data.max_skipped`` at most).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from trainer.data.batches import Batch, batches_per_epoch, epoch_order, shard_ranges, stream_seed
from trainer.data.collate import collate_items
from trainer.data.named import LABELS, is_named, slice_examples, to_device, unscored
from trainer.data.source import ExampleDataset
from trainer.errors import ConfigError, DataError, one_line
from trainer.params import Param

#: What the sampler hands a worker: (epoch, the example indices of one batch).
BatchKey = tuple[int, list[int]]

#: ``data=torch_dataset``'s keys besides ``name`` and :data:`TARGET_NODES` (conf/data/torch_dataset.yaml).
PARAMS = {
    "loader": Param("dataloader", "map-style data is read by DataLoader workers", str, choices=("dataloader",)),
    "batch_size": Param(64, "examples per micro-batch", int, low=1),
    "num_classes": Param(None, "classes when the training split has no classes attribute", int, low=1, extra=(None,)),
    "on_error": Param("raise", "an example that cannot be read or used mid-run: raise (the run fails naming it) or "
                      "skip (left out of its micro-batch, counted as data/skipped)", str, choices=("raise", "skip")),
    "max_skipped": Param(10, "with on_error=skip, the most distinct examples left out over the run (each counts "
                         "once, however often it is read) before it fails as with raise", int, low=0),
}
#: ``data=image_folder``'s own keys, which its split targets read (conf/data/image_folder.yaml).
IMAGE_FOLDER_PARAMS = {
    "train_dir": Param(None, "folder of class folders to train on (required)", str, extra=(None,)),
    "val_dir": Param(None, "folder of class folders to validate on (required)", str, extra=(None,)),
    "image_size": Param(224, "side of the square crop the model sees, in pixels", int, low=1),
    "augment": Param(True, "random-resized crop + flip for training; false: as validation", bool),
}
#: ``_target_`` nodes (and lists of them), checked by their targets' signatures, not declared here.
TARGET_NODES = ("train", "val", "train_transform", "val_transform", "collate")
#: Makes one batch of a list of examples (``data.collate``).
Collate = Callable[[list[Any]], Batch]


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


#: How a DataError mid-run says to fix it.
FIX = "fix or remove it, or set data.on_error=skip to leave such examples out"


def item_path(examples: TorchDataset, k: int) -> str | None:
    """The file item ``k`` is read from, for a folder dataset that lists (path, class) pairs as
    torchvision's do (``samples``, or the older ``imgs``); else None."""
    samples = getattr(examples, "samples", getattr(examples, "imgs", None))
    try:
        path = samples[k][0]
    except (TypeError, IndexError, KeyError):
        return None
    return str(path) if isinstance(path, (str, os.PathLike)) else None


def read_examples(
    examples: TorchDataset, indices: Sequence[int], *, seed: int, epoch: int, split: str = "train",
    failures: list[DataError] | None = None,
) -> list[Any]:
    """``examples[k]`` for each k, each read with torch's and Python's generators seeded from
    (seed, epoch, k); the caller's generator states are left as they were.

    An item whose reading raises is a DataError naming ``split``, k and its file; given
    ``failures``, that error is appended there instead and the item left out.
    """
    items = []
    with _RestoredRNG():
        for k in indices:
            example_seed = stream_seed(seed=seed, epoch=epoch, index=k)
            torch.manual_seed(example_seed)
            random.seed(example_seed)
            try:
                items.append(examples[k])
            except Exception as error:  # a damaged file, a user's __getitem__ or transform
                failure = DataError(split, [k], f"{type(error).__name__}: {one_line(error)}", item_path(examples, k), FIX)
                if failures is None:
                    raise failure from None
                failures.append(failure)
    return items


def label_problem(target: Any, num_classes: int | None) -> str | None:
    """Why ``target`` (an int or an integer tensor of class indices) holds a label outside
    0..num_classes-1, or None. -100 is cross-entropy's ignored target, so it passes; other
    targets (floats: a regression's) and unknown ``num_classes`` are not checked."""
    if num_classes is None or isinstance(target, bool) or not isinstance(target, (int, torch.Tensor)):
        return None
    labels = torch.as_tensor(target)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return None
    bad = ((labels < 0) & (labels != -100)) | (labels >= num_classes)
    if not bad.any():
        return None
    return f"label {int(labels[bad].flatten()[0])} is outside 0..{num_classes - 1} (data.num_classes={num_classes})"


@dataclass(frozen=True)
class Flawed:
    """What a worker hands back for a micro-batch some of whose examples failed: the batch of the
    others (``data.on_error=skip``), or None when the run must fail with ``errors[0]``. A worker's
    exception would reach the training process as a traceback in text; this keeps the error whole."""

    batch: Batch | None
    errors: tuple[DataError, ...]


@dataclass(frozen=True)
class SplitReader:
    """Reads a split's micro-batches, checking each against item 0 of the training split (the
    input shape) and the classes, where it costs a shape compare and a range check per batch;
    only a batch that fails is looked at item by item, to name the examples at fault."""

    examples: TorchDataset
    split: str  # "train" or "val"
    input_shape: tuple[int, ...]
    num_classes: int | None
    skip: bool = False  # data.on_error=skip
    collate: Collate = collate_items  # data.collate

    def batch(self, indices: Sequence[int], *, seed: int, epoch: int) -> Batch | Flawed:
        """Examples ``indices`` read (see :func:`read_examples`) and collated; a :class:`Flawed`
        batch when any failed."""
        failures: list[DataError] | None = [] if self.skip else None
        try:
            items = read_examples(self.examples, indices, seed=seed, epoch=epoch, split=self.split, failures=failures)
            failed = {failure.indices[0] for failure in failures or ()}
            batch = self._collate(items, [k for k in indices if k not in failed], failures)
        except DataError as error:
            return Flawed(None, (error,))
        return Flawed(batch, tuple(failures)) if failures else batch

    def _collate(self, items: list[Any], indices: list[int], failures: list[DataError] | None) -> Batch:
        if not items:  # data.on_error=skip left none: a micro-batch of no examples cannot train
            assert failures
            raise DataError(self.split, sorted(f.indices[0] for f in failures),
                            f"every example of a micro-batch failed, e.g. {failures[0]}")
        try:
            batch = self.collate(items)
            if is_named(batch):  # named sequences vary in length: their labels are what to check
                if label_problem(batch[LABELS], self.num_classes) is None:
                    return batch
                cause = "labels out of range"
            else:
                inputs, targets = batch
                if tuple(inputs.shape[1:]) == self.input_shape and label_problem(targets, self.num_classes) is None:
                    return batch
                cause = f"inputs of shape {tuple(inputs.shape[1:])}, not {self.input_shape}, or labels out of range"
        except Exception as error:  # examples that do not stack: found below
            cause = f"collating failed: {type(error).__name__}: {one_line(error)}"
        misfits = [DataError(self.split, [k], why, item_path(self.examples, k), FIX)
                   for k, item in sorted(zip(indices, items), key=lambda pair: pair[0]) if (why := self._misfit(item))]
        if not misfits or failures is None:
            raise misfits[0] if misfits else DataError(self.split, indices, cause)
        failures.extend(misfits)
        bad = {misfit.indices[0] for misfit in misfits}
        kept = [(k, item) for k, item in zip(indices, items) if k not in bad]
        return self._collate([item for _, item in kept], [k for k, _ in kept], failures)

    def _misfit(self, item: Any) -> str | None:
        """Why one example cannot join a batch, or None."""
        if isinstance(item, Mapping):
            labels = item.get(LABELS)
            return label_problem(torch.as_tensor(labels), self.num_classes) if labels is not None else None
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not torch.is_tensor(item[0]):
            return f"a {type(item).__name__}, not an (input tensor, target) pair"
        if tuple(item[0].shape) != self.input_shape:
            return f"input of shape {tuple(item[0].shape)}, not {self.input_shape} as item 0 of the training split"
        return label_problem(item[1], self.num_classes)


@dataclass(frozen=True)
class SeededBatches(TorchDataset):
    """The training split indexed by :data:`BatchKey`: one collated batch per key (what a
    ``DataLoader`` worker computes)."""

    reader: SplitReader
    seed: int

    def __getitem__(self, key: BatchKey) -> Batch | Flawed:
        epoch, indices = key
        return self.reader.batch(indices, seed=self.seed, epoch=epoch)


@dataclass(frozen=True)
class ValSlices(TorchDataset):
    """The validation split indexed by lists of example indices: one collated batch per list, each
    example k read with generators seeded from k alone (the same numbers at any world size, worker
    count or epoch). An empty list gives a batch that scores nothing, so every rank runs as many
    forwards as the others: pairs of no examples (item 0's shape and type), or item 0's named
    tensors with every label ignored (:func:`~trainer.data.named.unscored`: a model such as Hugging
    Face's cannot take zero rows)."""

    reader: SplitReader

    def __getitem__(self, indices: list[int]) -> Batch | Flawed:
        batch = self.reader.batch(indices or [0], seed=0, epoch=0)
        if indices or isinstance(batch, Flawed):
            return batch
        return unscored(batch) if is_named(batch) else slice_examples(batch, 0, 0)


def check_pair(item: Any, key: str) -> tuple[torch.Tensor, Any]:
    """``item`` as (input tensor, target); a ConfigError at ``key`` when it is not such a pair. A
    mapping's input is its ``input_ids`` (else its first entry) and its target its ``labels``
    (None when the collator makes them), each entry a tensor or what ``torch.as_tensor`` takes."""
    if isinstance(item, Mapping):
        if not item:
            raise ConfigError(key, "item 0 is an empty mapping: give named tensors such as input_ids and labels")
        values = {}
        for name, value in item.items():
            try:
                values[name] = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(key, f"item 0's {name!r} is a {type(value).__name__}, not a tensor or a list of "
                                  "numbers") from None
        return values.get("input_ids", next(iter(values.values()))), values.get(LABELS)
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ConfigError(key, f"item 0 is a {type(item).__name__}, not an (input, target) pair or a mapping of "
                          "named tensors")
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
    ``val=None`` trains without validation. ``skip``: ``data.on_error=skip``, which leaves out
    examples that fail, at most ``max_skipped`` distinct ones over the run (``skipped`` holds them,
    as (split, index): an example left out at every epoch or validation counts once).
    """

    train: TorchDataset
    val: TorchDataset | None
    num_classes: int | None  # None: a regression, or a model given rather than built
    input_shape: tuple[int, ...]
    num_workers: int
    pin_memory: bool = False
    skip: bool = False
    max_skipped: int = 10
    collate: Collate = collate_items  # data.collate: a list of examples -> one batch
    skipped: set[tuple[str, int]] = field(default_factory=set)
    _loaders: dict[tuple, tuple[DataLoader, EpochSampler | None]] = field(default_factory=dict, repr=False)

    @property
    def num_train(self) -> int:
        return len(self.train)

    def to(self, device: torch.device) -> MapDataset:
        """Itself: the examples stay in host memory (batches are pinned when ``pin_memory``)."""
        return self

    def _reader(self, split: str) -> SplitReader:
        examples = self.train if split == "train" else self.val
        return SplitReader(examples, split, self.input_shape, self.num_classes, self.skip, self.collate)

    def usable(self, batch: Batch | Flawed) -> Batch:
        """A batch as a worker read it: a :class:`Flawed` one raises its error, or with
        ``data.on_error=skip`` adds its left-out examples to ``skipped`` (a DataError past
        ``max_skipped`` distinct ones). One isinstance check for a batch that read well."""
        if not isinstance(batch, Flawed):
            return batch
        if batch.batch is None:
            raise batch.errors[0]
        self.skipped.update((error.split, error.indices[0]) for error in batch.errors)
        if len(self.skipped) > self.max_skipped:
            last = batch.errors[-1]
            raise DataError(last.split, last.indices, last.cause, last.path, f"more than data.max_skipped="
                            f"{self.max_skipped} examples skipped: fix the data, or raise data.max_skipped")
        return batch.batch

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
            self._loaders[key] = self._loader(SeededBatches(self._reader("train"), seed), None, sampler, seed), sampler
        loader, sampler = self._loaders[key]
        return MapEpoch(loader, sampler, epoch, self.usable)

    def val_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """This rank's slice of each validation batch of ``batch_size × world_size`` examples in
        order (see :func:`~trainer.data.batches.shard_ranges`): every example once over the ranks,
        read by this rank alone. Nothing without a validation split."""
        if self.val is None:
            return iter(())
        key = ("val", batch_size, rank, world_size)
        if key not in self._loaders:
            slices = [list(r) for r in shard_ranges(len(self.val), batch_size, rank=rank, world_size=world_size)]
            self._loaders[key] = self._loader(ValSlices(self._reader("val")), None, slices, 0), None
        return map(self.usable, self._loaders[key][0])

    def first_batch(self, size: int = 2) -> Batch:
        """The first ``size`` training examples as a batch, read in this process (the pre-training
        check): one that fails is a ConfigError at ``data.train``."""
        batch = SplitReader(self.train, "train", self.input_shape, self.num_classes, collate=self.collate).batch(
            range(min(size, len(self.train))), seed=0, epoch=0)
        if isinstance(batch, Flawed):
            error = batch.errors[0]
            raise ConfigError("data.train", f"item {error.indices[0]}{f' ({error.path})' if error.path else ''}: "
                              f"{error.cause}")
        return batch


@dataclass(frozen=True)
class MapEpoch:
    """One epoch of a :class:`MapDataset`: ``len`` micro-batches, read by the split's DataLoader."""

    loader: DataLoader
    sampler: EpochSampler
    epoch: int
    usable: Callable[[Batch | Flawed], Batch]  # MapDataset.usable: raises, or counts what was skipped

    def __len__(self) -> int:
        """Whole micro-batches in the epoch (over all ranks)."""
        return self.sampler.num_batches

    def batches(self, indices: Sequence[int], device: torch.device) -> Iterator[Batch]:
        """Micro-batches ``indices`` of the epoch, in that order, on ``device`` (copied without
        blocking from pinned memory)."""
        self.sampler.set_epoch(self.epoch, indices)
        for batch in map(self.usable, self.loader):
            yield to_device(batch, device, non_blocking=True)


def build_map_dataset(cfg: Any, *, pin_memory: bool) -> MapDataset:
    """``data.train`` / ``data.val`` from their ``_target_`` (``data.val: null``: no validation),
    batched by ``data.collate`` (null: :func:`~trainer.data.collate.collate_items`).

    ``num_classes``: the training split's ``classes`` attribute, else ``data.num_classes``.
    Item 0 of each split must be an (input tensor, target) pair or a mapping of named sequences:
    checked here, before training.
    """
    from trainer.components import build

    if cfg.get("train") is None:
        raise ConfigError("data.train", "missing: name the training split, e.g. data.train._target_=mypkg.MyDataset")
    train = build(cfg.train, "data.train")
    val = None if cfg.get("val") is None else build(cfg.val, "data.val")
    collate = collate_items if cfg.get("collate") is None else build(cfg.collate, "data.collate")
    if not callable(collate):
        raise ConfigError("data.collate", f"built a {type(collate).__name__}, which cannot be called on a list of examples")
    return map_dataset(train, val, num_classes=cfg.get("num_classes"), num_workers=worker_count(cfg.num_workers, train),
                       pin_memory=pin_memory, skip=cfg.get("on_error", "raise") == "skip",
                       max_skipped=cfg.get("max_skipped", PARAMS["max_skipped"].default), collate=collate)


def map_dataset(
    train: TorchDataset, val: TorchDataset | None, *, num_classes: int | None, num_workers: int, pin_memory: bool,
    skip: bool = False, max_skipped: int = PARAMS["max_skipped"].default, collate: Collate = collate_items,
) -> MapDataset:
    """A :class:`MapDataset` of datasets already built (``trainer.fit`` passes the caller's).

    Item 0 of each split is read here, before training: each must be an (input tensor, target)
    pair, the validation input of the training input's shape, or a mapping of named sequences in
    both splits (``input_shape`` is then item 0's ``input_ids``' shape: lengths may vary), and an
    integer label within 0..num_classes-1 (when the classes are known); else a ConfigError at
    ``data.train`` or ``data.val``.
    """
    classes = getattr(train, "classes", None)
    if classes is not None:
        num_classes = len(classes)
    # None: a regression, or a model that is given rather than built; a builder that takes
    # num_classes asks for it (trainer.models.build_model).
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError("data.num_classes", f"got {num_classes!r}; expected a whole number >= 1")
    input_shape, named = None, None
    for split, key in ((train, "data.train"), (val, "data.val")):
        if split is None:
            continue
        item = first_item(split, key)
        inputs, target = check_pair(item, key)
        problem = label_problem(target, num_classes)
        if problem is not None:
            raise ConfigError(key, f"item 0's {problem}: fix the labels, or data.num_classes")
        if named is not None and named != isinstance(item, Mapping):
            raise ConfigError(key, "item 0 is " + ("a mapping of named tensors" if not named else "an (input, target) "
                              "pair") + " but the training split's is not: both splits need examples of one kind")
        if not isinstance(item, Mapping) and input_shape is not None and tuple(inputs.shape) != input_shape:
            raise ConfigError(key, f"item 0's input has shape {tuple(inputs.shape)}, but the training split's has "
                              f"{input_shape}: both splits need the same transforms (size, crop)")
        input_shape, named = input_shape or tuple(inputs.shape), isinstance(item, Mapping)
    return MapDataset(train, val, num_classes, input_shape, num_workers, pin_memory, skip, max_skipped, collate)


def first_item(split: TorchDataset, key: str) -> Any:
    """Item 0 of ``split`` (the config at ``key``), checked to be a map-style dataset's:
    ConfigErrors before training, not DataErrors during it."""
    if not hasattr(split, "__getitem__") or not hasattr(split, "__len__"):
        raise ConfigError(key, f"a {type(split).__name__} is not a map-style dataset (it needs __len__ and __getitem__)")
    if len(split) == 0:
        raise ConfigError(key, f"the {type(split).__name__} holds no examples")
    try:
        item = read_examples(split, [0], seed=0, epoch=0)[0]
    except DataError as error:  # a user's __getitem__ (or transform) that fails on its first item
        raise ConfigError(key, f"reading item 0{f' ({error.path})' if error.path else ''} failed: {error.cause}") from None
    return item
