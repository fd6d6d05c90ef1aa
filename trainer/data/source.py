"""What a data source is: the :class:`Dataset` the loop reads, its :class:`DataSpec`, and the
in-memory :class:`ExampleDataset` the built-in image and synthetic sources return.

A source is any ``data._target_`` callable returning a :class:`Dataset` (the built-in ones are
``conf/data/NAME.yaml`` files naming their builders, e.g. ``trainer.data.fashion_mnist.fashion_mnist``).
A builder that can say its shape without loading anything (for ``python -m trainer.preview``)
carries that as :func:`with_spec`; any other is built and measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import torch

from trainer.data.batches import Augment, Batch, ExampleBatches, eval_batches, example_epoch
from trainer.params import Param

F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class Dataset(Protocol):
    """What the loop needs of a data source: its shape, training epochs and the validation split.

    Optional: ``flip_test`` (True: validate each image with its mirror too) and ``write_files(run_dir)``
    (what the run directory must keep of the data, e.g. a tokenizer's vocabulary), called once on
    rank 0 before training.
    """

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


class DataSpec(NamedTuple):
    """What a model and a run plan need to know about a data source before it is loaded."""

    input_shape: tuple[int, ...]  # one example's input
    num_classes: int  # classes, or the vocabulary size for text
    num_train: int  # training examples (or text windows) per epoch
    token_rows: bool = False  # examples are named token sequences (input_ids; of several lengths unless packed)


def with_spec(spec: DataSpec | Callable[..., DataSpec]) -> Callable[[F], F]:
    """Attach the builder's :class:`DataSpec`, known without loading the data: fixed, or computed
    from the builder's own keyword arguments (see :func:`spec_of`)."""

    def attach(builder: F) -> F:
        builder.__data_spec__ = (lambda **_: spec) if isinstance(spec, DataSpec) else spec  # type: ignore[attr-defined]
        return builder

    return attach


def spec_of(builder: Callable[..., Any]) -> Callable[..., DataSpec] | None:
    """The spec :func:`with_spec` attached to ``builder``, or None."""
    return getattr(builder, "__data_spec__", None)


@dataclass(frozen=True)
class ExampleDataset:
    """Train and validation splits of (input, class) examples.

    Inputs are float32 and normalized (images (N, C, H, W)); labels are int64 class indices in
    [0, num_classes). ``input_shape`` is one example's shape, e.g. (1, 28, 28) or (num_features,).
    ``flip_test``: validate on the mean of each image's logits and its mirror's.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Augment | None = None  # applied to each training batch (see ExampleBatches)
    flip_test: bool = False

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


def image_params(*, augment: bool) -> dict[str, Param]:
    """The keys of the built-in image sources (``data=fashion_mnist``, ``data=cifar10``)."""
    return {
        "root": Param(None, "directory with the dataset's files, or its parent", str, extra=(None,)),
        "download": Param(True, "try a torchvision download when the files are nowhere else", bool),
        "augment": Param(augment, "random crop with 4-pixel padding + horizontal flip, on the batch's device", bool),
        "flip_test": Param(False, "validate on the mean of each image's logits and its mirror's", bool),
    }
