"""Data sources: the built-in ones held whole in memory as tensors (``data.name`` -> loader), and
map-style datasets named by ``_target_`` (``data.train``, see ``trainer.data.map_style``).

The built-in datasets are small (Fashion-MNIST's 60k images are 188 MB as float32, the Shakespeare
corpus 40 MB as int64), so each split is one tensor and batches are gathered from it (see
``trainer.data.batches`` and ``trainer.data.text``). Where the batches are gathered is
``data.loader`` (see ``trainer.data.loading``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import torch
from omegaconf import DictConfig

from trainer.data import cifar10, fashion_mnist, loading, map_style, shakespeare_char, synthetic
from trainer.data.augment import crop_and_flip
from trainer.data.batches import (
    Augment,
    Batch,
    ExampleBatches,
    eval_batches,
    example_epoch,
)
from trainer.data.map_style import MapDataset, build_map_dataset
from trainer.data.shakespeare_char import load_shakespeare_char
from trainer.data.synthetic import load_synthetic
from trainer.errors import ConfigError
from trainer.params import Param, check_params

KNOWN = ("synthetic", "fashion_mnist", "cifar10", "shakespeare_char")
#: Data whose examples are token sequences: they need a sequence model (``model.block_size``).
SEQUENCE_DATA = ("shakespeare_char",)


class Dataset(Protocol):
    """What the loop needs of a data source: its shape, training epochs and the validation split."""

    @property
    def num_classes(self) -> int:
        """Classes, or the vocabulary size of a language model."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape, e.g. (1, 28, 28) or (block_size,)."""

    @property
    def num_train(self) -> int:
        """Training examples per epoch."""

    def to(self, device: torch.device) -> Dataset:
        """The same data with every tensor on ``device``."""

    def train_epoch(self, batch_size: int, *, seed: int, epoch: int) -> Sequence[Batch]:
        """``epoch``'s whole training batches; batch i is a pure function of (seed, epoch, i)."""

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """The whole validation split, in order."""


@dataclass(frozen=True)
class ExampleDataset:
    """Train and validation splits of (input, class) examples.

    Inputs are float32 and normalized (images (N, C, H, W)); labels are int64 class indices in
    [0, num_classes). ``input_shape`` is one example's shape, e.g. (1, 28, 28) or (num_features,).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Augment | None = None  # applied to each training batch (see ExampleBatches)

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def to(self, device: torch.device) -> ExampleDataset:
        """The same splits on ``device`` (small datasets live on the GPU whole)."""
        return replace(
            self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
            val_x=self.val_x.to(device), val_y=self.val_y.to(device),
        )

    def train_epoch(self, batch_size: int, *, seed: int, epoch: int) -> ExampleBatches:
        return example_epoch(self.train_x, self.train_y, batch_size, seed=seed, epoch=epoch, augment=self.augment)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        return eval_batches(self.val_x, self.val_y, batch_size)


#: Image datasets: module (IMAGE_SHAPE, NUM_CLASSES, TRAIN_SIZE) and loader.
_IMAGES = {
    "fashion_mnist": (fashion_mnist, fashion_mnist.load_fashion_mnist),
    "cifar10": (cifar10, cifar10.load_cifar10),
}


def _image_params(*, augment: bool) -> dict[str, Param]:
    return {
        "root": Param(None, "directory with the dataset's files, or its parent", str, extra=(None,)),
        "batch_size": Param(128, "examples per micro-batch", int, low=1),
        "download": Param(True, "try a torchvision download when the files are nowhere else", bool),
        "augment": Param(augment, "random crop with 4-pixel padding + horizontal flip, on the batch's device", bool),
        "flip_test": Param(False, "validate on the mean of each image's logits and its mirror's", bool),
    }


#: Every data source's keys besides ``name``: its own and the common ones (conf/data/NAME.yaml).
#: Map-style sources leave out their ``_target_`` nodes (map_style.TARGET_NODES): their targets check those.
PARAMS: dict[str, dict[str, Param]] = {
    name: {**own, **loading.PARAMS}
    for name, own in {
        "synthetic": synthetic.PARAMS,
        "fashion_mnist": _image_params(augment=False),
        "cifar10": _image_params(augment=True),
        "shakespeare_char": shakespeare_char.PARAMS,
    }.items()
}
PARAMS["torch_dataset"] = {**loading.PARAMS, **map_style.PARAMS}
PARAMS["image_folder"] = {**loading.PARAMS, **map_style.PARAMS, **map_style.IMAGE_FOLDER_PARAMS}


def is_map_style(cfg: DictConfig) -> bool:
    """Whether ``cfg`` names its splits by ``_target_`` (``data.train``), as ``data=torch_dataset``
    and ``data=image_folder`` do, instead of being one of the built-in in-memory sources."""
    return "train" in cfg


def check_data(cfg: DictConfig) -> None:
    """ConfigError unless ``cfg.name`` is a known source and each key is declared for it and allowed
    (a map-style source that is not ``image_folder``, e.g. a user's, takes ``torch_dataset``'s keys)."""
    if is_map_style(cfg):
        name = cfg.get("name") if cfg.get("name") in ("torch_dataset", "image_folder") else "torch_dataset"
        values = {k: v for k, v in cfg.items() if k != "name" and k not in map_style.TARGET_NODES}
        check_params(PARAMS[name], values, "data", owner=f"data {name!r}")
        return
    if cfg.name not in KNOWN:
        raise ConfigError("data.name", f"unknown data source {cfg.name!r}; use data={' or data='.join(KNOWN)}")
    check_params(PARAMS[cfg.name], {k: v for k, v in cfg.items() if k != "name"}, "data", owner=f"data {cfg.name!r}")


class DataSpec(NamedTuple):
    """What a model and a run plan need to know about a data source before it is loaded."""

    input_shape: tuple[int, ...]  # one example's input
    num_classes: int  # classes, or the vocabulary size for text
    num_train: int  # training examples (or text windows) per epoch


def data_spec(cfg: DictConfig) -> DataSpec:
    """Shape, classes and epoch size of ``data=cfg.name``; only text is read (its vocabulary and
    length are known only from the text), once; map-style splits are built to be measured."""
    check_data(cfg)
    if is_map_style(cfg):
        data = build_map_dataset(cfg, pin_memory=False)
        return DataSpec(data.input_shape, data.num_classes, data.num_train)
    if cfg.name == "synthetic":
        return DataSpec((cfg.num_features,), cfg.num_classes, cfg.train_size)
    if cfg.name in SEQUENCE_DATA:
        text = load_shakespeare_char(cfg)
        return DataSpec(text.input_shape, text.num_classes, text.num_train)
    module, _ = _IMAGES[cfg.name]
    return DataSpec(module.IMAGE_SHAPE, module.NUM_CLASSES, module.TRAIN_SIZE)


def build_dataset(cfg: DictConfig, seed: int, *, pin_memory: bool = False) -> Dataset:
    """Load ``cfg.name``; synthetic data is generated from ``seed``, the others ignore it.

    Image datasets with ``data.augment=true`` get random crops (4-pixel shifts) and flips on
    every training batch, on the batch's device. Map-style data (``data.train``) is built from
    its ``_target_``; ``pin_memory``: its DataLoaders pin batches (for a CUDA device).
    """
    check_data(cfg)
    if is_map_style(cfg):
        return build_map_dataset(cfg, pin_memory=pin_memory)
    if cfg.name in SEQUENCE_DATA:
        return load_shakespeare_char(cfg)
    input_shape, num_classes, _ = data_spec(cfg)
    if cfg.name == "synthetic":
        return ExampleDataset(*load_synthetic(cfg, seed), num_classes=num_classes, input_shape=input_shape)
    _, load = _IMAGES[cfg.name]
    augment = crop_and_flip if cfg.get("augment", False) else None
    return ExampleDataset(*load(cfg), num_classes=num_classes, input_shape=input_shape, augment=augment)


def first_batch(dataset: Dataset, size: int = 2) -> Batch:
    """A batch of ``size`` (or fewer) examples of ``dataset``, for checking that a model fits its data."""
    if isinstance(dataset, MapDataset):
        return dataset.first_batch(size)
    return next(iter(dataset.val_batches(size)))
