"""Fashion-MNIST from its four IDX files: ``data.root``, else Debian's package, else a download.

Search order:

1. ``data.root`` if set: ``ROOT/`` or torchvision's layout ``ROOT/FashionMNIST/raw/``.
2. ``DEBIAN_DIR``, where ``apt-get install dataset-fashion-mnist`` puts the gzipped files.
3. with ``data.download=true``, a torchvision download into ``cache_dir()``.

Each file may be plain or gzipped (``NAME.gz``). The validation split is the official 10k test
split (there is no separate validation set). Images are scaled to [0, 1] and then normalized with
the training set's mean and standard deviation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.data.augment import crop_and_flip
from trainer.data.cache import cache_dir
from trainer.data.idx import read_idx
from trainer.data.source import DataSpec, ExampleDataset, image_params, with_spec
from trainer.errors import ConfigError, one_line
from trainer.params import declare

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # of the 60k training images, in [0, 1] pixel units
TRAIN_SIZE = 60_000
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "val_x": "t10k-images-idx3-ubyte",
    "val_y": "t10k-labels-idx1-ubyte",
}


def _find(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` (plain preferred over .gz), or None if any is missing."""
    found = {}
    for key, name in FILES.items():
        path = next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _download(root: Path) -> dict[str, Path] | None:
    """Download with torchvision into ``root``; its raw IDX files are then read like any others."""
    import torchvision  # only here: importing it costs about a second

    # One dataset object fetches all four files (train and test) into ROOT/FashionMNIST/raw.
    torchvision.datasets.FashionMNIST(root=str(root), train=True, download=True)
    return _find(root / "FashionMNIST" / "raw")


def locate(root: str | None, download: bool) -> dict[str, Path]:
    """Paths of the four IDX files, searched in the order the module docstring gives."""
    names = ", ".join(f"{name}[.gz]" for name in FILES.values())
    if root is not None:
        directory = Path(root).expanduser()
        files = _find(directory) or _find(directory / "FashionMNIST" / "raw")
        if files is None:
            raise ConfigError(
                "data.root",
                f"no Fashion-MNIST IDX files in {directory} or {directory / 'FashionMNIST' / 'raw'} "
                f"(data.root={root!r}); put all four there ({names}) "
                "or set data.root=null to use the Debian package or a download",
            )
        return files
    files = _find(DEBIAN_DIR)
    if files is not None:
        return files
    why = f"not in {DEBIAN_DIR}, and data.download=false"
    if download:
        try:
            files = _download(cache_dir())
            if files is not None:
                return files
            why = f"not in {DEBIAN_DIR}, and the download left no IDX files in {cache_dir()}"
        except Exception as error:  # no network, a proxy, a full disk: all end in the same advice
            why = f"not in {DEBIAN_DIR}, and the download failed ({type(error).__name__}: {one_line(error)})"
    raise ConfigError(
        "data.root",
        f"Fashion-MNIST not found ({why}). Get it with `apt-get install dataset-fashion-mnist`, "
        f"or pass data.root=DIR with the four IDX files ({names}), "
        "or allow data.download=true on a machine with a network",
    )


def _images(path: Path) -> torch.Tensor:
    pixels = read_idx(path, ndim=3)
    if tuple(pixels.shape[1:]) != IMAGE_SHAPE[1:]:
        raise ConfigError(
            "data.root", f"{path} holds images of {list(pixels.shape[1:])} pixels, not 28x28: not Fashion-MNIST"
        )
    # In place: the same operations (so the same bits) without two more 188 MB temporaries, a
    # third of the decode time.
    return pixels.float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)


def _labels(path: Path, num_images: int) -> torch.Tensor:
    labels = read_idx(path, ndim=1).long()
    if len(labels) != num_images:
        raise ConfigError(
            "data.root", f"{path} has {len(labels)} labels for {num_images} images: use the matching files"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise ConfigError(
            "data.root", f"{path} has label {int(labels.max())}, outside 0..{NUM_CLASSES - 1}: not Fashion-MNIST"
        )
    return labels


@with_spec(DataSpec(IMAGE_SHAPE, NUM_CLASSES, TRAIN_SIZE))
@declare(**image_params(augment=False))
def fashion_mnist(*, root: str | None, download: bool, augment: bool, flip_test: bool) -> ExampleDataset:
    """``data=fashion_mnist``; validation is the official 10k test split. Images are float32
    (N, 1, 28, 28), normalized as (pixel / 255 - MEAN) / STD; labels int64 in 0..9. ``augment``:
    a random 4-pixel-shift crop and flip of every training batch."""
    files = locate(root, download)
    train_x, val_x = _images(files["train_x"]), _images(files["val_x"])
    return ExampleDataset(
        train_x, _labels(files["train_y"], len(train_x)), val_x, _labels(files["val_y"], len(val_x)),
        num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE, augment=crop_and_flip if augment else None,
        flip_test=flip_test,
    )
