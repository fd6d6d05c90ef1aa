"""Every model: output shape, gradients reaching every parameter, and known sizes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from trainer.errors import ConfigError
from trainer.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_backward_shapes(name, input_shape):
    torch.manual_seed(0)
    cfg = OmegaConf.load(f"conf/model/{name}.yaml")
    model = build_model(cfg, input_shape=input_shape, num_classes=10)
    logits = model(torch.randn(4, *input_shape))
    assert logits.shape == (4, 10)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_resnet20_has_the_papers_size():
    model = build_model(OmegaConf.create({"name": "resnet20", "blocks_per_stage": 3}),
                        input_shape=(3, 32, 32), num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    # He et al. 2016 report 0.27M. By hand, option-A shortcuts (no parameters): stem conv 3*16*9
    # + BN 32; stage 1: 3 blocks of 2*(16*16*9) + 2*32; stage 2: 16*32*9 + 32*32*9 + 2*64, then
    # 2 blocks of 2*(32*32*9) + 2*64; stage 3 likewise at 64; classifier 64*10 + 10.
    stage1 = 3 * (2 * 16 * 16 * 9 + 2 * 32)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 2 * 64) + 2 * (2 * 32 * 32 * 9 + 2 * 64)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 2 * 128) + 2 * (2 * 64 * 64 * 9 + 2 * 128)
    assert n_params == 3 * 16 * 9 + 32 + stage1 + stage2 + stage3 + 64 * 10 + 10 == 269_722
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) + 1 == 20  # 19 convs + the classifier


def test_resnet18_keeps_small_images_at_full_size_in_the_first_stage():
    model = build_model(OmegaConf.create({"name": "resnet18"}), input_shape=(3, 32, 32), num_classes=10)
    features = model.layer1(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32)))))
    assert features.shape == (1, 64, 32, 32)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="known: cnn, mlp, resnet18, resnet20"):
        build_model(OmegaConf.create({"name": "vgg"}), input_shape=(1, 28, 28), num_classes=10)
