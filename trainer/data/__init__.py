"""Data sources held whole in memory as tensors: ``data.name`` -> loader.

The datasets here are small (Fashion-MNIST's 60k images are 188 MB as float32), so each split is
one tensor and batches are index_select'ed from it (see ``trainer.data.batches``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig

from trainer.data import cifar10, fashion_mnist
from trainer.data.augment import crop_and_flip
from trainer.data.batches import Augment
from trainer.data.synthetic import check_synthetic, load_synthetic
from trainer.errors import ConfigError

KNOWN = ("synthetic", "fashion_mnist", "cifar10")


@dataclass(frozen=True)
class Dataset:
    """Train and validation splits.

    Inputs are float32 and normalized (images (N, C, H, W)); labels are int64 class indices in
    [0, num_classes). ``input_shape`` is one example's shape, e.g. (1, 28, 28) or (num_features,).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Augment | None = None  # applied to each training batch (see epoch_batches)

    def to(self, device: torch.device) -> Dataset:
        """The same splits on ``device`` (small datasets live on the GPU whole)."""
        return replace(
            self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
            val_x=self.val_x.to(device), val_y=self.val_y.to(device),
        )


#: Image datasets: module (IMAGE_SHAPE, NUM_CLASSES, TRAIN_SIZE) and loader.
_IMAGES = {
    "fashion_mnist": (fashion_mnist, fashion_mnist.load_fashion_mnist),
    "cifar10": (cifar10, cifar10.load_cifar10),
}


def _check(cfg: DictConfig) -> None:
    if cfg.name not in KNOWN:
        raise ConfigError("data.name", f"unknown data source {cfg.name!r}; use data={' or data='.join(KNOWN)}")
    if cfg.name == "synthetic":
        check_synthetic(cfg)


def data_shape(cfg: DictConfig) -> tuple[tuple[int, ...], int]:
    """(one example's input shape, number of classes) without loading anything."""
    _check(cfg)
    if cfg.name == "synthetic":
        return (cfg.num_features,), cfg.num_classes
    module, _ = _IMAGES[cfg.name]
    return module.IMAGE_SHAPE, module.NUM_CLASSES


def num_train_examples(cfg: DictConfig) -> int:
    """Size of the training split without loading it."""
    _check(cfg)
    return cfg.train_size if cfg.name == "synthetic" else _IMAGES[cfg.name][0].TRAIN_SIZE


def build_dataset(cfg: DictConfig, seed: int) -> Dataset:
    """Load ``cfg.name``; synthetic data is generated from ``seed``, image datasets ignore it.

    Image datasets with ``data.augment=true`` get random crops (4-pixel shifts) and flips on
    every training batch, on the batch's device.
    """
    input_shape, num_classes = data_shape(cfg)
    if cfg.name == "synthetic":
        return Dataset(*load_synthetic(cfg, seed), num_classes=num_classes, input_shape=input_shape)
    _, load = _IMAGES[cfg.name]
    augment = crop_and_flip if cfg.get("augment", False) else None
    return Dataset(*load(cfg), num_classes=num_classes, input_shape=input_shape, augment=augment)
