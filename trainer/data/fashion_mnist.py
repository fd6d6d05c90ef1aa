"""Fashion-MNIST from IDX files: ``data.root``, else Debian's package, else a torchvision download.

The validation split is the official 10k test split. Images are scaled to [0, 1] and normalized
with the training set's mean and standard deviation.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from trainer.errors import ConfigError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
TRAIN_SIZE = 60_000
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "val_x": "t10k-images-idx3-ubyte",
    "val_y": "t10k-labels-idx1-ubyte",
}
_MAGIC = {3: 2051, 1: 2049}  # images (3 dims), labels (1 dim), unsigned bytes


def cache_dir() -> Path:
    """Where torchvision downloads go: ``$TRAINER_DATA_CACHE`` or ``~/.cache/trainer``."""
    return Path(os.environ.get("TRAINER_DATA_CACHE", Path.home() / ".cache" / "trainer"))


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (plain or .gz) as a uint8 tensor of its stored shape."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise ConfigError("data.root", f"{path} is not an IDX file of unsigned bytes (bad header)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(torch.tensor(shape).prod())
    if len(raw) != expected:
        raise ConfigError("data.root", f"{path} is truncated or corrupt: {len(raw)} bytes, header says {expected}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _find(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` (plain or .gz), or None if any is missing."""
    found = {}
    for key, name in FILES.items():
        candidates = [directory / name, directory / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _download(root: Path) -> dict[str, Path] | None:
    import torchvision

    for train in (True, False):
        torchvision.datasets.FashionMNIST(root=str(root), train=train, download=True)
    return _find(root / "FashionMNIST" / "raw")


def locate(cfg: DictConfig) -> dict[str, Path]:
    """Paths of the four IDX files, searched in the documented order."""
    if cfg.root is not None:
        root = Path(cfg.root).expanduser()
        files = _find(root) or _find(root / "FashionMNIST" / "raw")
        if files is None:
            raise ConfigError(
                "data.root", f"no Fashion-MNIST IDX files in {root} or {root / 'FashionMNIST' / 'raw'}"
            )
        return files
    files = _find(DEBIAN_DIR)
    if files is not None:
        return files
    why = "data.download=false"
    if cfg.download:
        try:
            files = _download(cache_dir())
        except Exception as error:  # no network, proxy, disk: all end in the same advice
            why = f"download failed ({type(error).__name__}: {error})"
        if files is not None:
            return files
    raise ConfigError(
        "data.root",
        f"Fashion-MNIST not found ({why}). Install it with `apt-get install dataset-fashion-mnist`, "
        "or pass data.root=DIR with the four IDX files, or allow data.download=true with a network",
    )


def load_fashion_mnist(cfg: DictConfig) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, val_x, val_y): images (N, 1, 28, 28) float32 normalized, labels int64."""
    files = locate(cfg)

    def images(key: str) -> torch.Tensor:
        return ((read_idx(files[key]).float() / 255.0 - MEAN) / STD).unsqueeze(1)

    def labels(key: str) -> torch.Tensor:
        return read_idx(files[key]).long()

    return images("train_x"), labels("train_y"), images("val_x"), labels("val_y")
