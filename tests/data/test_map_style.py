"""Map-style datasets: the epoch order and each rank's slice, per-example seeding, ImageFolder."""

from __future__ import annotations

from pathlib import Path

import numpy
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.userpkg.data import Blobs
from trainer.data.batches import epoch_order, eval_batches
from trainer.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, image_folder
from trainer.data.loading import rank_batches
from trainer.data.map_style import EpochSampler, map_dataset, read_examples
from trainer.errors import ConfigError
from trainer.models import build_model


def write_image_folder(root: Path, *, per_class: int = 4, size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    """``root/{cat,dog}/K.png``: ``per_class`` random RGB images of ``size`` (width, height) per class."""
    generator = torch.Generator().manual_seed(seed)
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = torch.randint(0, 128, (size[1], size[0], 3), generator=generator, dtype=torch.uint8) + 100 * label
            Image.fromarray(pixels.numpy()).save(root / name / f"{k}.png")
    return root


def test_sampler_cuts_the_epoch_order_and_each_rank_reads_its_slice_of_every_global_batch():
    order = epoch_order(23, seed=5, epoch=2).tolist()
    sampler = EpochSampler(23, 3, seed=5)
    assert sampler.num_batches == 23 // 3
    ranks = []
    for rank in range(2):  # micro-batches of 3, 2 ranks, no accumulation: global batches of 6
        sampler.set_epoch(2, rank_batches(sampler.num_batches, start_batch=0, rank=rank, world_size=2))
        ranks.append(list(sampler))
    assert [len(r) for r in ranks] == [23 // 6] * 2
    for i in range(23 // 6):  # global batch i = order[6i:6i+6]; rank 0 the first 3, rank 1 the next
        assert ranks[0][i] == (2, order[6 * i : 6 * i + 3])
        assert ranks[1][i] == (2, order[6 * i + 3 : 6 * i + 6])
    sampler.set_epoch(2, range(4, 23 // 3))  # a resumed epoch: from micro-batch 4 on
    assert [indices for _, indices in sampler] == [order[3 * i : 3 * i + 3] for i in range(4, 23 // 3)]
    with pytest.raises(ValueError, match="need micro-batches in 0..6"):
        sampler.set_epoch(0, [7])


@pytest.mark.parametrize("size, world_size", [(11, 2), (9, 2), (9, 1), (3, 4)])
def test_each_rank_validates_its_slice_of_each_batch_as_the_in_memory_data_does(size, world_size):
    """In-memory validation slices each batch of 2 × ranks examples by rank; a map-style split
    reads the same slices, an empty one at the end when the split runs out, so over the ranks
    every example counts once and every rank runs the same number of batches."""
    val = Blobs(size, jitter=0.0)
    data = map_dataset(Blobs(4), val, num_classes=3, num_workers=0, pin_memory=False)
    x, y = torch.stack([val[k][0] for k in range(size)]), torch.tensor([val[k][1] for k in range(size)])
    shards = [list(data.val_batches(2, rank=r, world_size=world_size)) for r in range(world_size)]
    whole = list(eval_batches(x, y, 2 * world_size))
    assert [len(s) for s in shards] == [len(whole)] * world_size
    for rank, shard in enumerate(shards):
        for (inputs, targets), (all_x, all_y) in zip(shard, whole, strict=True):
            assert torch.equal(inputs, all_x[2 * rank : 2 * rank + 2]) and inputs.shape[1:] == (8,)
            assert torch.equal(targets, all_y[2 * rank : 2 * rank + 2]) and targets.dtype == torch.int64
    assert sum(len(t) for shard in shards for _, t in shard) == size


def test_each_example_draws_from_its_own_seed_whatever_was_read_before():
    data = Blobs(10, jitter=1.0)
    alone = read_examples(data, [7], seed=3, epoch=1)[0][0]
    after_others = read_examples(data, [2, 5, 7], seed=3, epoch=1)[2][0]
    assert torch.equal(alone, after_others)
    assert not torch.equal(alone, read_examples(data, [7], seed=3, epoch=2)[0][0])  # a new draw each epoch
    assert not torch.equal(alone, read_examples(data, [7], seed=4, epoch=1)[0][0])
    state = torch.get_rng_state()
    read_examples(data, range(10), seed=0, epoch=0)
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator did not move


def test_image_folder_standard_transforms(tmp_path):
    root = write_image_folder(tmp_path / "train")
    train = image_folder(str(root), image_size=8)
    assert train.classes == ["cat", "dog"] and len(train) == 8 and train.targets == [0] * 4 + [1] * 4
    crops = [read_examples(train, [5], seed=0, epoch=e)[0][0] for e in range(3)]
    assert crops[0].shape == (3, 8, 8) and not torch.equal(crops[0], crops[1])  # random-resized crop + flip
    assert torch.equal(read_examples(train, [5], seed=0, epoch=1)[0][0], crops[1])
    # validation is deterministic: a one-colour image stays that colour through resize + center
    # crop, so each channel is exactly (value / 255 - mean) / std
    solid = tmp_path / "solid" / "only"
    solid.mkdir(parents=True)
    Image.new("RGB", (30, 20), (255, 0, 128)).save(solid / "a.png")
    image, label = image_folder(str(solid.parent), split="val", image_size=8, augment=False)[0]
    expected = (torch.tensor([255, 0, 128]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert image.shape == (3, 8, 8) and label == 0
    assert torch.allclose(image, expected.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    with pytest.raises(ConfigError, match="^data.val_dir: no directory at"):
        image_folder(str(tmp_path / "missing"), split="val")


def test_map_dataset_checks_pairs_and_classes():
    with pytest.raises(ConfigError, match=r"^data.train: item 0 is a Tensor, not an \(input, target\) pair"):
        map_dataset(Blobs(4, pairs=False), None, num_classes=3, num_workers=0, pin_memory=False)
    # No classes and no data.num_classes: a regression's data, or a model that is given; only a
    # builder that takes num_classes asks for it.
    assert map_dataset(Blobs(4), None, num_classes=None, num_workers=0, pin_memory=False).num_classes is None
    with pytest.raises(ConfigError, match="^data.num_classes: trainer.models.mlp.build_mlp takes num_classes"):
        build_model(OmegaConf.create({"_target_": "trainer.models.mlp.build_mlp"}), input_shape=(8,), num_classes=None)
    data = map_dataset(Blobs(6), Blobs(2), num_classes=3, num_workers=0, pin_memory=False)
    assert (data.input_shape, data.num_classes, data.num_train) == ((8,), 3, 6)
    inputs, targets = next(data.val_batches(5))
    assert inputs.shape == (2, 8) and targets.dtype == torch.int64


def test_image_folder_transforms_are_overridable_as_target_lists(tmp_path):
    from tests.conftest import QUIET, compose_config
    from trainer.data import build_dataset

    root = write_image_folder(tmp_path / "imgs", size=(12, 10))
    crop = "[{_target_:torchvision.transforms.CenterCrop,size:6},{_target_:torchvision.transforms.PILToTensor}]"
    overrides = ["data=image_folder", f"data.train_dir={root}", f"data.val_dir={root}", "data.num_workers=0",
                 f"data.train_transform={crop}"]
    # validation keeps the standard transforms (224 px): inputs of two shapes are refused before training
    with pytest.raises(ConfigError, match=r"^data.val: item 0's input has shape \(3, 224, 224\), but the training "
                                          r"split's has \(3, 6, 6\)"):
        build_dataset(compose_config(*overrides, base=QUIET).data, seed=0)
    data = build_dataset(compose_config(*overrides, "data.image_size=6", base=QUIET).data, seed=0)
    assert data.input_shape == (3, 6, 6) and data.num_classes == 2
    image = torch.from_numpy(numpy.asarray(Image.open(root / "cat" / "0.png").convert("RGB")))
    assert torch.equal(data.train[0][0], image[2:8, 3:9].permute(2, 0, 1))  # the 6x6 center of 12x10, uint8
    assert data.val[0][0].dtype == torch.float32  # validation keeps the standard transforms, normalized
