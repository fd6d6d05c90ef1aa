"""data.loader: the DataLoader path gives the very batches the in-memory path gives, and trains
to the same weights."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_config
from trainer.app.run import train
from trainer.data.augment import crop_and_flip
from trainer.data.batches import example_epoch
from trainer.data.loading import train_batches
from trainer.data.text import split_text
from trainer.rundir.checkpoint import load_checkpoint


def image_epoch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    return example_epoch(x, y, 6, seed=1, epoch=2, augment=crop_and_flip)


def text_epoch():
    return split_text("".join(chr(97 + i % 26) for i in range(3000)), block_size=16).train_epoch(8, seed=1, epoch=2)


@pytest.mark.parametrize("make_epoch", [image_epoch, text_epoch])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("start_batch", [0, 3])
def test_dataloader_batches_equal_in_memory_batches(make_epoch, num_workers, start_batch):
    epoch = make_epoch()
    cpu = torch.device("cpu")
    in_memory = list(train_batches(epoch, start_batch=start_batch, device=cpu, num_workers=None))
    loaded = list(train_batches(epoch, start_batch=start_batch, device=cpu, num_workers=num_workers))
    assert len(in_memory) == len(loaded) == len(epoch) - start_batch > 0
    for (xa, ya), (xb, yb) in zip(in_memory, loaded, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_negative_start_is_refused():
    with pytest.raises(ValueError, match="start_batch >= 0"):
        next(train_batches(image_epoch(), start_batch=-1, device=torch.device("cpu"), num_workers=None))


def test_dataloader_run_trains_to_the_same_weights(tmp_path):
    overrides = ["schedule=cosine", "trainer.max_epochs=2"]
    train(compose_config(*overrides), tmp_path / "device")
    train(compose_config(*overrides, "data.loader=dataloader", "data.num_workers=2"), tmp_path / "workers")
    a, b = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("device", "workers"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
