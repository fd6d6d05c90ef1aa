"""Fashion-MNIST: IDX parsing, normalization, where the files are looked for, and the errors."""

from __future__ import annotations

import gzip
import re
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config
from trainer.data import build_dataset, data_spec
from trainer.data import fashion_mnist as fm
from trainer.data.source import DataSpec
from trainer.errors import ConfigError

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def idx_bytes(array: torch.Tensor) -> bytes:
    """The real IDX layout: 0, 0, type 0x08 (ubyte), ndim, then big-endian uint32 sizes and the data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def write_idx(path: Path, array: torch.Tensor, *, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path, data = path.with_name(path.name + ".gz"), gzip.compress(data)
    path.write_bytes(data)
    return path


def make_fashion(directory: Path, *, gz: bool | dict[str, bool]) -> dict[str, torch.Tensor]:
    """12 train and 5 test images with random pixels and labels; ``gz`` may differ per file."""
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    arrays = {
        TRAIN_IMAGES: torch.randint(0, 256, (12, 28, 28), generator=g),
        TRAIN_LABELS: torch.randint(0, 10, (12,), generator=g),
        TEST_IMAGES: torch.randint(0, 256, (5, 28, 28), generator=g),
        TEST_LABELS: torch.randint(0, 10, (5,), generator=g),
    }
    arrays[TRAIN_IMAGES][0, 0, :2] = torch.tensor([0, 255])  # the extremes, checked by value below
    for name, array in arrays.items():
        write_idx(directory / name, array, gz=gz if isinstance(gz, bool) else gz[name])
    return arrays


def fashion_cfg(root: Path | None, *, download: bool = False):
    return OmegaConf.create(
        {"name": "fashion_mnist", "_target_": "trainer.data.fashion_mnist.fashion_mnist", "root": None if root is None else str(root), "batch_size": 4, "download": download}
    )


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No Debian package and no network: the download, if tried, fails as it would offline."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("TRAINER_DATA_CACHE", str(tmp_path / "cache"))
    calls = []

    def offline(root):
        calls.append(root)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, got:\n"
                           "<urlopen error [Errno -3] Temporary failure in name resolution>\n")

    monkeypatch.setattr(fm, "_download", offline)
    return calls


def test_config_defaults(nowhere):
    cfg = compose_config("data=fashion_mnist", base=[]).data
    assert OmegaConf.to_container(cfg) == {
        "_target_": "trainer.data.fashion_mnist.fashion_mnist", "name": "fashion_mnist", "root": None,
        "batch_size": 128, "download": True, "augment": False,
        "flip_test": False, "loader": "device", "num_workers": "auto",
    }
    # Sizes come without touching any file (nothing could be found here anyway).
    assert data_spec(cfg) == DataSpec((1, 28, 28), 10, 60000)
    assert nowhere == []


@pytest.mark.parametrize("gz", [True, False, {TRAIN_IMAGES: True, TRAIN_LABELS: False, TEST_IMAGES: False,
                                             TEST_LABELS: True}], ids=["gz", "plain", "mixed"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_reads_idx_files_from_data_root(tmp_path, nowhere, gz, layout):
    directory = tmp_path / "root" if layout == "flat" else tmp_path / "root" / "FashionMNIST" / "raw"
    arrays = make_fashion(directory, gz=gz)
    data = build_dataset(fashion_cfg(tmp_path / "root"), seed=0)
    assert data.train_x.shape == (12, 1, 28, 28) and data.val_x.shape == (5, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    # pixel p in 0..255 -> (p / 255 - 0.2860) / 0.3530
    assert data.train_x[0, 0, 0, :2].tolist() == pytest.approx([-0.2860 / 0.3530, (1 - 0.2860) / 0.3530])
    assert data.train_x[0, 0, 0, :2].tolist() == pytest.approx([-0.81020, 2.02266], abs=1e-5)
    for split, name in (("train_x", TRAIN_IMAGES), ("val_x", TEST_IMAGES)):
        expected = ((arrays[name].double() / 255 - 0.2860) / 0.3530).unsqueeze(1)
        assert torch.allclose(getattr(data, split).double(), expected, atol=1e-6), split
    assert torch.equal(data.train_y, arrays[TRAIN_LABELS])
    assert torch.equal(data.val_y, arrays[TEST_LABELS])
    assert nowhere == []  # found in data.root: no download tried


def test_debian_package_directory_is_used_when_root_is_unset(tmp_path, monkeypatch, nowhere):
    arrays = make_fashion(tmp_path / "debian", gz=True)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    data = build_dataset(fashion_cfg(None, download=True), seed=0)
    assert torch.equal(data.val_y, arrays[TEST_LABELS]) and nowhere == []


def test_download_goes_to_the_cache_and_its_raw_files_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("TRAINER_DATA_CACHE", str(tmp_path / "cache"))
    roots = []

    def fake_fashion_mnist(root, train, download):  # leaves what torchvision does: ROOT/FashionMNIST/raw
        assert download
        roots.append(root)
        make_fashion(Path(root) / "FashionMNIST" / "raw", gz=False)

    # A stand-in torchvision: the real one needs a network, and importing it takes seconds.
    fake = SimpleNamespace(datasets=SimpleNamespace(FashionMNIST=fake_fashion_mnist))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    data = build_dataset(fashion_cfg(None, download=True), seed=0)
    assert roots == [str(tmp_path / "cache")]
    assert data.train_x.shape == (12, 1, 28, 28) and len(data.val_y) == 5


def test_data_root_without_the_files_is_an_error_and_does_not_fall_back(tmp_path, monkeypatch, nowhere):
    make_fashion(tmp_path / "debian", gz=True)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    make_fashion(tmp_path / "partial", gz=False)
    (tmp_path / "partial" / TEST_LABELS).unlink()
    for root in (tmp_path / "empty", tmp_path / "partial"):
        with pytest.raises(ConfigError, match=f"no Fashion-MNIST IDX files in {re.escape(str(root))} ") as error:
            build_dataset(fashion_cfg(root, download=True), seed=0)
        assert error.value.key == "data.root"
        assert TEST_LABELS in str(error.value) and "data.root=null" in str(error.value)
    assert nowhere == []


def test_nothing_found_anywhere_says_how_to_get_the_data(nowhere):
    with pytest.raises(ConfigError) as error:
        build_dataset(fashion_cfg(None, download=True), seed=0)
    message = str(error.value)
    assert error.value.key == "data.root" and message.startswith("data.root: Fashion-MNIST not found")
    assert "apt-get install dataset-fashion-mnist" in message and "data.root=DIR" in message
    assert "data.download=true" in message
    assert "RuntimeError: Error downloading train-images-idx3-ubyte.gz" in message  # the folded-in cause
    assert "Temporary failure in name resolution" in message
    assert "\n" not in message  # the CLI prints it on one line
    assert len(nowhere) == 1


def test_download_false_does_not_try_the_network(nowhere):
    with pytest.raises(ConfigError, match="data.download=false.*apt-get install dataset-fashion-mnist"):
        build_dataset(fashion_cfg(None, download=False), seed=0)
    assert nowhere == []


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def corrupt_gzip(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])  # cuts into the deflate stream and its trailer


def swap_for_labels(path: Path) -> None:
    path.write_bytes(idx_bytes(torch.zeros(12, dtype=torch.uint8)))  # a 1-d label file, magic 2049


def bad_type(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[2] = 0x0D  # float32 data instead of unsigned bytes
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("gz", "damage", "message"),
    [
        (False, truncate, "9324 bytes, but its header .* says 9424"),
        (False, lambda path: path.write_bytes(path.read_bytes() + b"\0"), "9425 bytes, but its header"),
        (True, corrupt_gzip, "cannot be read"),
        (False, swap_for_labels, "magic number 2049, expected 2051"),
        (False, bad_type, "magic number 3331, expected 2051"),
        (False, lambda path: path.write_bytes(b"\0\0\x08"), "3 bytes, shorter than its 16-byte header"),
    ],
    ids=["truncated", "trailing-bytes", "truncated-gzip", "labels-as-images", "not-ubyte", "no-header"],
)
def test_corrupt_idx_file_is_an_error_naming_it(tmp_path, nowhere, gz, damage, message):
    make_fashion(tmp_path, gz=gz)
    path = tmp_path / (TRAIN_IMAGES + (".gz" if gz else ""))
    damage(path)
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))} is truncated or corrupt \\(.*{message}") as error:
        build_dataset(fashion_cfg(tmp_path), seed=0)
    assert error.value.key == "data.root" and "fetch it again" in str(error.value)


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        (TRAIN_LABELS, torch.zeros(11), "has 11 labels for 12 images"),
        (TEST_LABELS, torch.tensor([0, 1, 2, 3, 10]), "has label 10, outside 0..9"),
        (TRAIN_IMAGES, torch.zeros(12, 32, 32), r"holds images of \[32, 32\] pixels, not 28x28"),
    ],
    ids=["label-count", "label-range", "image-size"],
)
def test_files_that_are_not_fashion_mnist_are_errors_naming_them(tmp_path, nowhere, name, array, message):
    make_fashion(tmp_path, gz=False)
    write_idx(tmp_path / name, array, gz=False)
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path / name))} {message}"):
        build_dataset(fashion_cfg(tmp_path), seed=0)


@pytest.mark.skipif(
    not (fm.DEBIAN_DIR / f"{TRAIN_IMAGES}.gz").exists(),
    reason=f"the real data is absent: {fm.DEBIAN_DIR} comes from `apt-get install dataset-fashion-mnist`",
)
def test_real_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setattr(fm, "_download", lambda root: pytest.fail("downloaded despite the Debian package"))
    data = build_dataset(fashion_cfg(None), seed=0)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.val_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert torch.bincount(data.val_y).tolist() == [1000] * 10
    # MEAN and STD are the training set's, so normalized training pixels have mean 0 and std 1.
    assert data.train_x.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert data.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
