"""CIFAR-10 from files written in its official format; the crop-and-flip augmentation."""

from __future__ import annotations

import pickle

import numpy
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tests.test_resume import preempt_after
from trainer.app.run import train
from trainer.data import build_dataset, data_spec
from trainer.data.augment import crop_and_flip
from trainer.data.source import DataSpec
from trainer.errors import ConfigError, Preempted
from trainer.rundir.checkpoint import load_checkpoint


def write_cifar(root, per_batch=6, test=4, seed=0):
    """The five training batches and the test batch, as cifar-10-python.tar.gz extracts them."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = numpy.random.default_rng(seed)
    written = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=numpy.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(directory / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        written[name] = (data, labels)
    return written


def cfg_for(root, **extra):
    return OmegaConf.create({"name": "cifar10", "_target_": "trainer.data.cifar10.cifar10", "root": None if root is None else str(root), "batch_size": 4,
                             "download": False,
                             "augment": False, **extra})


@pytest.mark.parametrize("point_at_subdir", [False, True])
def test_reads_the_official_format(tmp_path, point_at_subdir):
    written = write_cifar(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if point_at_subdir else tmp_path
    data = build_dataset(cfg_for(root), seed=0)
    assert data.train_x.shape == (30, 3, 32, 32) and data.val_x.shape == (4, 3, 32, 32)
    raw, labels = written["data_batch_2"]
    # example 1 of batch 2 is training example 7; its green plane starts at byte 1024, row 5 col 9
    pixel = raw[1, 1024 + 5 * 32 + 9]
    assert data.train_x[7, 1, 5, 9].item() == pytest.approx((pixel / 255 - 0.4822) / 0.2435, rel=1e-5)
    assert data.train_y[6:12].tolist() == labels
    assert data.val_y.tolist() == written["test_batch"][1]
    assert data_spec(cfg_for(root)) == DataSpec((3, 32, 32), 10, 50000)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_DATA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="no CIFAR-10 batch files"):
        build_dataset(cfg_for(tmp_path / "empty"), seed=0)
    with pytest.raises(ConfigError, match="CIFAR-10 not found .*data.download=true"):
        build_dataset(cfg_for(None), seed=0)
    write_cifar(tmp_path / "bad")
    (tmp_path / "bad" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="data_batch_3 is not a CIFAR-10 batch file"):
        build_dataset(cfg_for(tmp_path / "bad"), seed=0)


def test_crop_and_flip_moves_each_image_by_at_most_the_padding():
    x = torch.randn(16, 3, 8, 8)
    out = crop_and_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    def crop(i, dy, dx, flip):
        window = padded[i, :, dy:dy + 8, dx:dx + 8]
        return window.flip(2) if flip else window

    flips = 0
    for i in range(16):
        candidates = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                      if torch.equal(out[i], crop(i, dy, dx, f))]
        assert candidates, f"image {i} is not a shifted (and maybe flipped) crop"
        flips += candidates[0][2]
    assert 0 < flips < 16  # both outcomes occur
    again = crop_and_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)


def test_augmented_run_resumes_exactly(tmp_path, monkeypatch):
    write_cifar(tmp_path / "data", per_batch=20, test=10)
    overrides = ["data=cifar10", f"data.root={tmp_path / 'data'}", "data.batch_size=10", "data.augment=true",
                 "model=mlp", "schedule=cosine", "trainer.max_epochs=2"]
    train(compose_config(*overrides, base=["trainer.num_threads=1", "logger.progress_bar=false"]), tmp_path / "a")
    with monkeypatch.context() as patch:
        preempt_after(patch, 13)
        with pytest.raises(Preempted):
            train(compose_config(*overrides, base=["trainer.num_threads=1", "logger.progress_bar=false"]),
                  tmp_path / "b")
    train(compose_config(*overrides, "trainer.resume=auto", base=["trainer.num_threads=1", "logger.progress_bar=false"]),
          tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["update"] == b["update"] == 20
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
