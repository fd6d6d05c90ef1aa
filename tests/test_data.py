"""Data sources: batching order, synthetic determinism, Fashion-MNIST's IDX loading and search."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trainer.data import build_dataset, data_shape, num_train_examples
from trainer.data import fashion_mnist as fm
from trainer.data.batches import epoch_batches, eval_batches
from trainer.errors import ConfigError


def test_epoch_batches_drop_last_cover_once_and_resume_mid_epoch():
    x, y = torch.arange(50).float().unsqueeze(1), torch.arange(50)
    batches = list(epoch_batches(x, y, 8, seed=3, epoch=1))
    assert len(batches) == 6  # 50 // 8: the partial batch of 2 is dropped
    seen = torch.cat([b[1] for b in batches])
    assert len(set(seen.tolist())) == 48
    assert torch.equal(torch.cat([b[1] for b in epoch_batches(x, y, 8, seed=3, epoch=1)]), seen)
    assert not torch.equal(torch.cat([b[1] for b in epoch_batches(x, y, 8, seed=3, epoch=2)]), seen)
    tail = list(epoch_batches(x, y, 8, seed=3, epoch=1, start_batch=4))
    assert [t[1].tolist() for t in tail] == [b[1].tolist() for b in batches[4:]]
    assert [len(b[1]) for b in eval_batches(x, y, 8)] == [8] * 6 + [2]


def synthetic_cfg(**overrides):
    cfg = OmegaConf.load(Path(__file__).parent.parent / "conf/data/synthetic.yaml")
    cfg.update(overrides)
    return cfg


def test_synthetic_is_deterministic_learnable_and_shaped():
    cfg = synthetic_cfg(train_size=600, val_size=200)
    a, b, c = build_dataset(cfg, 1), build_dataset(cfg, 1), build_dataset(cfg, 2)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (600, 16) and a.train_y.dtype == torch.int64 and a.input_shape == (16,)
    assert set(a.train_y.tolist()) == {0, 1, 2, 3}
    # A least-squares linear fit of one-hot labels classifies held-out data far above chance (0.25).
    w = torch.linalg.lstsq(a.train_x, torch.nn.functional.one_hot(a.train_y).float()).solution
    accuracy = ((a.val_x @ w).argmax(1) == a.val_y).float().mean().item()
    assert accuracy > 0.8
    assert data_shape(cfg) == ((16,), 4) and num_train_examples(cfg) == 600


def write_idx(path: Path, array: torch.Tensor, *, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.dim()) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.to(torch.uint8).numpy().tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_fashion(directory: Path, *, gz: bool) -> dict[str, torch.Tensor]:
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (12, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.randint(0, 10, (12,), generator=g),
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (5, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.randint(0, 10, (5,), generator=g),
    }
    for name, array in arrays.items():
        write_idx(directory / name, array, gz=gz)
    return arrays


def fashion_cfg(root):
    return OmegaConf.create({"name": "fashion_mnist", "root": None if root is None else str(root),
                             "batch_size": 4, "download": False})


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_reads_idx_files_from_data_root(tmp_path, gz, layout):
    directory = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    arrays = make_fashion(directory, gz=gz)
    data = build_dataset(fashion_cfg(tmp_path), seed=0)
    assert data.train_x.shape == (12, 1, 28, 28) and data.val_x.shape == (5, 1, 28, 28)
    pixel = arrays["train-images-idx3-ubyte"][3, 10, 20].item()
    assert data.train_x[3, 0, 10, 20].item() == pytest.approx((pixel / 255 - 0.2860) / 0.3530, rel=1e-6)
    assert torch.equal(data.train_y, arrays["train-labels-idx1-ubyte"].long())
    assert torch.equal(data.val_y, arrays["t10k-labels-idx1-ubyte"].long())
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)


def test_truncated_idx_file_is_an_error_naming_it(tmp_path):
    make_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte is truncated"):
        build_dataset(fashion_cfg(tmp_path), seed=0)


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(ConfigError) as error:
        build_dataset(fashion_cfg(None), seed=0)
    message = str(error.value)
    assert error.value.key == "data.root"
    assert "apt-get install dataset-fashion-mnist" in message and "data.root=DIR" in message
    with pytest.raises(ConfigError, match="no Fashion-MNIST IDX files in"):
        build_dataset(fashion_cfg(tmp_path / "empty"), seed=0)


def test_failed_download_is_folded_into_the_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("TRAINER_DATA_CACHE", str(tmp_path / "cache"))

    def offline(root):
        raise OSError("network is unreachable")

    monkeypatch.setattr(fm, "_download", offline)
    cfg = fashion_cfg(None)
    cfg.download = True
    with pytest.raises(ConfigError, match="download failed .*network is unreachable"):
        build_dataset(cfg, seed=0)


@pytest.mark.skipif(not (fm.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package():
    data = build_dataset(fashion_cfg(None), seed=0)
    assert len(data.train_y) == 60000 and len(data.val_y) == 10000
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert data.train_x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert data.train_x.std().item() == pytest.approx(1.0, abs=0.01)
