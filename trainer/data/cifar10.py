"""CIFAR-10 from its official on-disk format: ``data.root``, else a torchvision download.

The files are ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``: pickled dicts whose
``b"data"`` is (N, 3072) uint8 in R, G, B planes of 32x32 and ``b"labels"`` a list of ints. They
are read here (torchvision only downloads them), so any files in that format load, including the
small ones the tests write. The validation split is the official 10k test split. Images are scaled
to [0, 1] and normalized per channel with the training set's mean and standard deviation.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy
import torch

from trainer.data.augment import crop_and_flip
from trainer.data.cache import cache_dir
from trainer.data.source import DataSpec, ExampleDataset, image_params, with_spec
from trainer.errors import ConfigError, one_line
from trainer.params import declare

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TRAIN_SIZE = 50_000
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
SUBDIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"


def _find(root: Path) -> Path | None:
    """The directory holding the six batch files: ``root`` itself or ``root/cifar-10-batches-py``."""
    for directory in (root, root / SUBDIR):
        if all((directory / name).is_file() for name in (*TRAIN_FILES, TEST_FILE)):
            return directory
    return None


def locate(root: str | None, download: bool) -> Path:
    """The directory holding the six batch files: ``root`` (or its subdirectory), else the cache,
    else (``download``) a torchvision download into the cache."""
    if root is not None:
        found = _find(Path(root).expanduser())
        if found is None:
            raise ConfigError(
                "data.root",
                f"got {str(Path(root).expanduser())!r}: no CIFAR-10 batch files ({', '.join(TRAIN_FILES)}, {TEST_FILE}) in it or in "
                f"its {SUBDIR}/; point data.root at the extracted cifar-10-python.tar.gz",
            )
        return found
    found = _find(cache_dir())
    if found is not None:
        return found
    why = "data.download=false"
    if download:
        try:
            import torchvision  # only here: importing it costs about a second

            torchvision.datasets.CIFAR10(root=str(cache_dir()), train=True, download=True)
            found = _find(cache_dir())
            if found is not None:
                return found
            why = f"the download left no batch files in {cache_dir()}"
        except Exception as error:  # no network, proxy, disk: all end in the same advice
            why = f"download failed ({type(error).__name__}: {one_line(error)})"
    raise ConfigError(
        "data.root",
        f"CIFAR-10 not found ({why}). Pass data.root=DIR with the extracted cifar-10-batches-py, "
        "or allow data.download=true with a network",
    )


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official format is a pickle
        labels = torch.tensor(batch[b"labels"], dtype=torch.long)
        images = torch.as_tensor(numpy.asarray(batch[b"data"], dtype=numpy.uint8)).reshape(len(labels), *IMAGE_SHAPE)
    except Exception as error:
        raise ConfigError("data.root", f"{path} is not a CIFAR-10 batch file ({type(error).__name__}: {error})") from None
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < NUM_CLASSES:
        raise ConfigError("data.root", f"{path} has labels outside 0-{NUM_CLASSES - 1}")
    return images, labels


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return images.float().div_(255.0).sub_(mean).div_(std)  # in place: the same bits, no temporaries


@with_spec(DataSpec(IMAGE_SHAPE, NUM_CLASSES, TRAIN_SIZE))
@declare(**image_params(augment=True))
def cifar10(*, root: str | None, download: bool, augment: bool, flip_test: bool) -> ExampleDataset:
    """``data=cifar10``: images (N, 3, 32, 32) float32 normalized, labels int64; ``augment``: a
    random 4-pixel-shift crop and flip of every training batch."""
    directory = locate(root, download)
    parts = [_read_batch(directory / name) for name in TRAIN_FILES]
    train_x = _normalize(torch.cat([images for images, _ in parts]))
    train_y = torch.cat([labels for _, labels in parts])
    val_images, val_y = _read_batch(directory / TEST_FILE)
    return ExampleDataset(
        train_x, train_y, _normalize(val_images), val_y, num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE,
        augment=crop_and_flip if augment else None, flip_test=flip_test,
    )
