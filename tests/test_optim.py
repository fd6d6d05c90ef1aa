"""Parameter groups: weight-decay exemptions and per-module LR scales (seed 002's layered LRs)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import compose_config
from trainer.app.run import train
from trainer.errors import ConfigError
from trainer.models import build_model
from trainer.optim.factory import build_optimizer, load_optimizer_state, optimizer_state
from trainer.optim.groups import parameter_groups
from trainer.rundir.events import read_scalars

CPU = torch.device("cpu")

# Seed 002: "bottom layers (ResNet blocks 1-2) get 0.1x learning rate, middle layers 0.5x, top layers 1.0x".
SEED002_LAYERS = {"conv1": 0.1, "bn1": 0.1, "layer1": 0.1, "layer2": 0.1, "layer3": 0.5}


def resnet18():
    return build_model(compose_config("model=resnet18").model, input_shape=(3, 32, 32), num_classes=10)


def test_seed002_layered_lrs_on_resnet18():
    model = resnet18()
    groups = parameter_groups(model, weight_decay=5e-4, lr_scales=SEED002_LAYERS)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scale_of) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # each once
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        assert scale_of[id(param)] == SEED002_LAYERS.get(top, 1.0), name  # layer4 and fc keep the full LR
    names = [g["name"] for g in groups]
    assert names[:2] == ["decay", "no_decay"]  # the base-LR groups first: train/lr shows group 0
    assert set(names[2:]) == {f"{kind}/{m}" for kind in ("decay", "no_decay") for m in SEED002_LAYERS} - {
        "decay/bn1", "no_decay/conv1"}  # bn1 has only a norm weight and bias (no decay), conv1 no bias
    assert all(g["weight_decay"] == (0.0 if g["name"].startswith("no_decay") else 5e-4) for g in groups)


def test_the_longest_module_name_wins_and_numeric_names_work():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))
    groups = parameter_groups(model, weight_decay=0.0, lr_scales={1: 0.5, "1.1": 0.25}, split_decay=False)
    by_name = {g["name"]: (g["lr_scale"], len(g["params"])) for g in groups}
    assert by_name == {"all": (1.0, 2), "all/1": (0.5, 2), "all/1.1": (0.25, 2)}


def test_a_module_name_that_names_nothing_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        parameter_groups(resnet18(), weight_decay=0.0, lr_scales={"layer9": 0.1})
    assert error.value.key == "optimizer.lr_scales.layer9"
    assert "its top-level modules are conv1, bn1" in str(error.value)


def test_a_tied_module_is_named_by_the_module_that_owns_its_weight():
    from trainer.models.gpt import build_gpt

    model = build_gpt(input_shape=(4,), num_classes=11, n_layer=1, n_head=2, n_embd=8, block_size=4)
    with pytest.raises(ConfigError) as error:
        parameter_groups(model, weight_decay=0.1, lr_scales={"lm_head": 0.1})
    assert error.value.key == "optimizer.lr_scales.lm_head"
    assert "tied to wte.weight" in str(error.value)


def test_every_group_starts_at_its_own_base_lr():
    cfg = compose_config("optimizer=sgd", "optimizer.lr=0.2", "optimizer.lr_scales={layer1:0.1,layer3:0.5}").optimizer
    optimizer = build_optimizer(cfg, resnet18(), CPU)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"decay": 0.2, "no_decay": 0.2, "decay/layer1": 0.02, "no_decay/layer1": 0.02, "decay/layer3": 0.1,
         "no_decay/layer3": 0.1})


def test_layered_lrs_keep_their_ratio_through_the_schedule(train_cli):
    """The real CLI: module 1 of the MLP at 0.1x; every group's logged LR is the schedule's times its scale."""
    _, run_dir = train_cli("schedule=warmup_cosine", "schedule.warmup_steps=4", "schedule.min_lr=1e-4",
                           "optimizer.lr=0.01", "trainer.max_epochs=2", "optimizer.lr_scales={1:0.1}")
    scalars = read_scalars(run_dir)
    base = [v for _, v in scalars["train/lr/decay"]]
    assert len(base) == 16 and base == [v for _, v in scalars["train/lr"]]
    for tag in ("train/lr/decay/1", "train/lr/no_decay/1"):
        assert [v for _, v in scalars[tag]] == pytest.approx([0.1 * v for v in base], rel=1e-6)  # float32 in the event file
    assert max(base) == pytest.approx(0.01) and base[-1] > 1e-4  # the schedule itself is untouched


@pytest.mark.parametrize("later", ["optimizer.lr_scales={4:0.1}", "optimizer.lr_scales=null"])
def test_a_resume_with_other_groups_is_refused_before_training(tmp_path, later):
    """Optimizer state is matched to parameters by position: momentum buffers of other groups
    would land on parameters of other shapes, or silently on the wrong ones of the same shape."""
    common = ["optimizer=sgd", "schedule=cosine", "schedule.total_steps=16", "trainer.max_epochs=1"]
    train(compose_config(*common, "optimizer.lr_scales={1:0.1}"), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(compose_config(*common, later, "trainer.max_epochs=2", "trainer.resume=auto",
                             "trainer.resume_schedule=override"), tmp_path)
    assert error.value.key == "trainer.resume"
    assert "optimizer.lr_scales or optimizer.no_decay_bias_and_norm changed?" in str(error.value)


def test_loaded_moments_take_the_memory_layout_of_their_parameters():
    """A CPU run's NCHW moments resumed next to a GPU run's channels_last weights: fused kernels
    refuse tensors whose layouts differ, so the loaded state follows each parameter's strides."""
    cfg = compose_config("model=cnn").model
    model = build_model(cfg, input_shape=(1, 28, 28), num_classes=10)
    opt_cfg = compose_config().optimizer
    saved = build_optimizer(opt_cfg, model, CPU)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    saved.step()
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    here = build_optimizer(opt_cfg, channels_last, CPU)
    load_optimizer_state(here, optimizer_state(saved))
    convs = [p for p in channels_last.parameters() if p.ndim == 4]
    assert any(not p.is_contiguous() for p in convs)  # NHWC strides (a 1-channel conv looks contiguous)
    for param in channels_last.parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            assert here.state[param][key].stride() == param.stride(), key
    for a, b in zip(model.parameters(), channels_last.parameters()):
        assert torch.equal(saved.state[a]["exp_avg"], here.state[b]["exp_avg"])  # same values, new layout
