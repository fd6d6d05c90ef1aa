"""The experiment= recipes: each composes to its source's numbers and instantiates, and each
trains for real through the CLI, shrunk to a few updates on the CPU, with its logs read back."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import QUIET, REPO, compose_config, run_cli
from tests.data.test_cifar10 import write_cifar
from tests.data.test_fashion_mnist import make_fashion
from tests.data.test_map_style import write_image_folder
from trainer.app.build import build_for_preview
from trainer.rundir.events import read_scalars

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))

# The values each recipe's source gives (see the comment at the top of each file).
RECIPES = {
    "resnet18_fashion_mnist": {
        "model.name": "resnet18", "data.name": "fashion_mnist", "data.batch_size": 512, "data.augment": True,
        "data.flip_test": True, "optimizer.name": "sgd", "optimizer.lr": 0.2, "optimizer.momentum": 0.9,
        "optimizer.nesterov": True, "schedule.name": "warmup_cosine", "schedule.warmup_ratio": 0.1,
        "trainer.max_epochs": 20, "trainer.label_smoothing": 0.1,
    },
    "resnet18_cifar10": {
        "model.name": "resnet18", "data.name": "cifar10", "data.batch_size": 512, "data.augment": True,
        "optimizer.name": "sgd", "optimizer.nesterov": True, "schedule.name": "warmup_cosine",
        "trainer.label_smoothing": 0.1,
    },
    "resnet20_cifar10_step": {
        "model.name": "resnet20", "data.name": "cifar10", "data.batch_size": 128, "data.augment": True,
        "optimizer.name": "sgd", "optimizer.lr": 0.1, "optimizer.momentum": 0.9, "optimizer.weight_decay": 1e-4,
        "schedule.name": "multistep", "schedule.interval": "step", "schedule.milestones": [32000, 48000],
        "schedule.gamma": 0.1, "trainer.max_steps": 64000,
    },
    "resnet50_imagenet": {
        "model._target_": "torchvision.models.resnet50", "model.num_classes": 1000, "data.name": "image_folder",
        "data.batch_size": 256, "data.image_size": 224, "data.augment": True, "optimizer.name": "sgd",
        "optimizer.lr": 0.1, "optimizer.lr_scaling": "linear", "optimizer.reference_batch_size": 256,
        "optimizer.momentum": 0.9, "optimizer.nesterov": False, "optimizer.weight_decay": 1e-4,
        "schedule.name": "multistep", "schedule.interval": "epoch", "schedule.milestones": [30, 60],
        "schedule.gamma": 0.1, "trainer.max_epochs": 90,
    },
    "gpt_shakespeare_char": {
        "model.name": "gpt", "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384, "model.block_size": 256,
        "model.dropout": 0.2, "data.name": "shakespeare_char", "data.batch_size": 64, "data.block_size": 256,
        "optimizer.name": "adamw", "optimizer.lr": 1e-3, "optimizer.betas": [0.9, 0.99],
        "optimizer.weight_decay": 0.1, "schedule.name": "chain",  # schedule=nanogpt: nanoGPT's get_lr
        "schedule.phases": [{"name": "linear_warmup", "steps": 100, "offset": 1}, {"name": "cosine", "min_lr": 1e-4}],
        "trainer.max_steps": 5000, "trainer.clip_grad_norm": 1.0,
    },
    "lora_sft": {  # seed 002's LoRA row: cosine + warmup, 2e-4, 10% warmup (schedule=preset_lora)
        "model.name": "hf", "model.task": "causal_lm",
        "model.lora": {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": "all-linear"},
        "data.name": "torch_dataset", "data.batch_size": 8, "optimizer.name": "adamw", "optimizer.lr": 2e-4,
        "optimizer.weight_decay": 0.0, "schedule.name": "warmup_cosine", "schedule.warmup_ratio": 0.1,
        "schedule.min_lr": 0.0, "trainer.max_epochs": 3, "trainer.clip_grad_norm": 1.0,
    },
}

# LR the built schedule gives at some updates: from each recipe's own formula.
SCHEDULE_POINTS = {
    # 60000 // 512 = 117 updates/epoch x 20 = 2340 updates, warmup round(0.1 x 2340) = 234
    "resnet18_fashion_mnist": {0: 0.0, 117: 0.2 * 117 / 234, 234: 0.2, 1287: 0.1, 2340: 0.0},
    # 50000 // 512 = 97 x 30 = 2910 updates, warmup round(0.0667 x 2910) = 194
    "resnet18_cifar10": {97: 0.2 * 97 / 194, 194: 0.2, 194 + 1358: 0.1},
    "resnet20_cifar10_step": {0: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001, 63999: 0.001},
    # 512 images / 256 = 2 updates per epoch: seed 000's 0.1 / 0.01 / 0.001 over epochs 1-30 / 31-60 / 61-90
    "resnet50_imagenet": {0: 0.1, 59: 0.1, 60: 0.01, 119: 0.01, 120: 0.001, 179: 0.001},
    # nanoGPT's warmup 1e-3 (t+1)/101, then cosine to 1e-4 at 5000: halfway (update 2550) is the mean of the two
    "gpt_shakespeare_char": {0: 1e-3 / 101, 50: 1e-3 * 51 / 101, 100: 1e-3, 2550: 5.5e-4, 5000: 1e-4},
    # 160 instructions // 8 = 20 updates per epoch x 3 = 60, warmup round(0.1 x 60) = 6, cosine to 0 at 60
    "lora_sft": {0: 0.0, 3: 1e-4, 6: 2e-4, 33: 1e-4, 60: 0.0},
}


def text_file(tmp_path, characters=40_000):
    path = tmp_path / "text.txt"
    g = torch.Generator().manual_seed(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n"]
    picks = torch.randint(0, len(words), (characters // 3,), generator=g).tolist()
    path.write_text(" ".join(words[i] for i in picks)[:characters], encoding="utf-8")
    return path


def tiny_causal_lm(tmp_path):
    """A local folder save_pretrained wrote: a tiny GPT-2 (nothing is downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=32, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(folder)
    return folder


def instructions(size: int) -> list[str]:
    return [f"data.train={{_target_:tests.userpkg.text.Instructions,size:{size}}}",
            "data.val={_target_:tests.userpkg.text.Instructions,size:8,seed:1}", "data.num_workers=0"]


def test_every_experiment_is_covered():
    assert EXPERIMENTS == sorted(RECIPES) == sorted(SCHEDULE_POINTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_to_its_recipe_and_instantiates(name, tmp_path):
    extra = [f"data.path={text_file(tmp_path)}"] if name.startswith("gpt") else []
    if name == "resnet50_imagenet":  # the ImageNet batch of 256 needs 512 images for 2 updates per epoch
        images = write_image_folder(tmp_path / "images", per_class=256, size=(4, 4))
        extra = [f"data.train_dir={images}", f"data.val_dir={images}"]
    if name == "lora_sft":
        extra = [f"model.path={tiny_causal_lm(tmp_path)}", *instructions(160)]
    cfg = compose_config(f"experiment={name}", *extra, base=[])
    for key, expected in RECIPES[name].items():
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        assert value == (pytest.approx(expected) if isinstance(expected, float) else expected), key
    optimizer, schedule, plan = build_for_preview(cfg)
    assert type(optimizer).__name__.lower() == cfg.optimizer.name
    for update, lr in SCHEDULE_POINTS[name].items():
        assert schedule.lr(update) == pytest.approx(lr, rel=1e-9, abs=1e-12), update


def shrunk(name, tmp_path):
    """Overrides that keep the recipe but run a few updates on tiny data on the CPU."""
    if name == "resnet18_fashion_mnist":
        make_fashion(tmp_path / "fm", gz=True)  # 12 train / 5 test images: 3 updates of 4
        return [f"data.root={tmp_path / 'fm'}", "data.batch_size=4", "trainer.max_epochs=1"]
    if name.endswith("cifar10") or name.endswith("cifar10_step"):
        write_cifar(tmp_path / "cifar", per_batch=4)  # 20 train / 4 test images
        size = ["trainer.max_epochs=1"] if name == "resnet18_cifar10" else [
            "trainer.max_steps=5", "schedule.milestones=[2,4]", "trainer.val_every_n_epochs=1"]
        return [f"data.root={tmp_path / 'cifar'}", "data.batch_size=4", "data.download=false", *size]
    if name == "resnet50_imagenet":  # 8 train / 4 val PNGs, 2 classes: 2 updates per epoch, LR ÷ 10 after epoch 1
        train, val = write_image_folder(tmp_path / "train"), write_image_folder(tmp_path / "val", per_class=2, seed=1)
        return [f"data.train_dir={train}", f"data.val_dir={val}", "data.image_size=32", "data.batch_size=4",
                "data.num_workers=1", "model.num_classes=2", "trainer.max_epochs=2", "schedule.milestones=[1]"]
    if name == "lora_sft":  # 16 instructions / 4 = 4 updates, warmup round(0.4) = 0
        return [f"model.path={tiny_causal_lm(tmp_path)}", *instructions(16), "data.batch_size=4", "trainer.max_epochs=1"]
    return [f"data.path={text_file(tmp_path, 4000)}", "data.batch_size=4", "model.block_size=32",
            "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "trainer.max_steps=6",
            "schedule.phases.0.steps=2"]


EXPECTED_LRS = {
    # 12 // 4 = 3 updates; warmup round(0.1 x 3) = 0, then cosine from 0.2 to 0 over 3 updates
    "resnet18_fashion_mnist": [0.2 * (1 + math.cos(math.pi * t / 3)) / 2 for t in range(3)],
    # 20 // 4 = 5 updates; warmup round(0.0667 x 5) = 0
    "resnet18_cifar10": [0.2 * (1 + math.cos(math.pi * t / 5)) / 2 for t in range(5)],
    # LR ÷ 10 at updates 2 and 4
    "resnet20_cifar10_step": [0.1, 0.1, 0.01, 0.01, 0.001],
    # η = 0.1 × 4 / 256 (the linear rule) for epoch 0, ÷ 10 for epoch 1
    "resnet50_imagenet": [0.1 * 4 / 256] * 2 + [0.01 * 4 / 256] * 2,
    # nanoGPT's 2 warmup updates at 1e-3 (t+1)/3, then cosine to 1e-4 at update 6
    "gpt_shakespeare_char": [1e-3 / 3, 2e-3 / 3] + [1e-4 + 0.45e-3 * (1 + math.cos(math.pi * (t - 2) / 4))
                                                    for t in range(2, 6)],
    # no warmup update in 4, then cosine from 2e-4 to 0
    "lora_sft": [2e-4 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)],
}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_through_the_cli(name, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("trainer", [*QUIET, f"experiment={name}", *shrunk(name, tmp_path), f"hydra.run.dir={run_dir}"])
    scalars = read_scalars(run_dir)
    lrs = [v for _, v in scalars["train/lr"]]
    assert lrs == pytest.approx(EXPECTED_LRS[name], rel=1e-6, abs=1e-12)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["updates"] == len(EXPECTED_LRS[name])
    val_loss = summary["metrics"]["val/loss"]
    assert [v for _, v in scalars["val/loss"]][-1] == pytest.approx(val_loss)
    saved = OmegaConf.load(run_dir / "config.yaml")
    if name.startswith("gpt"):
        vocab = json.loads((run_dir / "vocab.json").read_text())
        assert vocab["chars"] == "".join(sorted(set((tmp_path / "text.txt").read_text())))
        # an untrained character model is near log(vocab) nats per character
        assert 0.5 * math.log(vocab["size"]) < val_loss < 1.5 * math.log(vocab["size"])
        assert saved.data.block_size == saved.model.block_size == 32
    else:
        # random images and labels, a few updates: only finiteness and the accuracy's range are known
        assert math.isfinite(val_loss) and val_loss > 0 and 0.0 <= summary["metrics"]["val/acc"] <= 1.0
