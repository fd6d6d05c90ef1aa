"""Data sources held whole in memory as tensors: ``data.name`` -> loader.

The datasets here are small (Fashion-MNIST's 60k images are 188 MB as float32), so each split is
one tensor and batches are index_select'ed from it (see ``trainer.data.batches``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig

from trainer.data import fashion_mnist
from trainer.data.synthetic import check_synthetic, load_synthetic
from trainer.errors import ConfigError

KNOWN = ("synthetic", "fashion_mnist")


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

    def to(self, device: torch.device) -> Dataset:
        """The same splits on ``device`` (small datasets live on the GPU whole)."""
        return replace(
            self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
            val_x=self.val_x.to(device), val_y=self.val_y.to(device),
        )


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
    return fashion_mnist.IMAGE_SHAPE, fashion_mnist.NUM_CLASSES


def num_train_examples(cfg: DictConfig) -> int:
    """Size of the training split without loading it."""
    _check(cfg)
    return cfg.train_size if cfg.name == "synthetic" else fashion_mnist.TRAIN_SIZE


def build_dataset(cfg: DictConfig, seed: int) -> Dataset:
    """Load ``cfg.name``; synthetic data is generated from ``seed``, Fashion-MNIST ignores it."""
    input_shape, num_classes = data_shape(cfg)
    if cfg.name == "synthetic":
        splits = load_synthetic(cfg, seed)
    else:
        splits = fashion_mnist.load_fashion_mnist(cfg)
    return Dataset(*splits, num_classes=num_classes, input_shape=input_shape)
