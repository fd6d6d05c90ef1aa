"""Every model: output shape, gradients reaching every parameter, and known sizes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_config
from trainer.components import shipped_targets
from trainer.errors import ConfigError
from trainer.models import NAMED_MODELS, SEQUENCE_MODELS, build_model, check_model
from trainer.optim.groups import parameter_groups

IMAGE_MODELS = sorted(set(shipped_targets("model")) - set(SEQUENCE_MODELS) - set(NAMED_MODELS))


@pytest.mark.parametrize("name", IMAGE_MODELS)
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
    model = build_model(compose_config("model=resnet20", "model.blocks_per_stage=3", "data=cifar10", base=[]).model,
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
    model = build_model(compose_config("model=resnet18").model, input_shape=(3, 32, 32), num_classes=10)
    features = model.layer1(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32)))))
    assert features.shape == (1, 64, 32, 32)


def test_a_model_without_a_target_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="model=cnn | gpt | hf | mlp | resnet18 | resnet20") as error:
        check_model(OmegaConf.create({"name": "vgg"}))
    assert error.value.key == "model._target_"


def gpt(vocab, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load("conf/model/gpt.yaml"), overrides)
    return build_model(cfg, input_shape=(cfg.block_size,), num_classes=vocab)


TINY_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8, "dropout": 0.0}


def test_gpt_forward_backward_shapes():
    torch.manual_seed(0)
    model = gpt(**TINY_GPT, vocab=11)
    tokens = torch.randint(0, 11, (3, 8))
    logits = model(tokens)
    assert logits.shape == (3, 8, 11)
    logits.logsumexp(dim=-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model(tokens[:, :5]).shape == (3, 5, 11)  # shorter contexts work too
    with pytest.raises(ValueError, match="longer than block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_gpt_is_causal():
    """Changing token t changes no prediction at positions before t."""
    torch.manual_seed(0)
    model = gpt(**TINY_GPT, vocab=11).eval()
    tokens = torch.randint(0, 11, (1, 8))
    changed = tokens.clone()
    changed[0, 5] = (tokens[0, 5] + 1) % 11
    before, after = model(tokens), model(changed)
    assert torch.equal(before[0, :5], after[0, :5])
    assert not torch.allclose(before[0, 5:], after[0, 5:])


def test_gpt_ties_output_to_input_embedding_and_exempts_it_from_decay():
    model = gpt(**TINY_GPT, vocab=11)
    assert model.lm_head.weight is model.wte.weight
    groups = {g["name"]: g["params"] for g in parameter_groups(model, weight_decay=0.1)}
    no_decay = {id(p) for p in groups["no_decay"]}
    assert id(model.wte.weight) in no_decay and id(model.wpe.weight) in no_decay
    assert all(p.ndim == 2 for p in groups["decay"]) and id(model.blocks[0].attn.qkv.weight) not in no_decay
    # every parameter exactly once (the tied weight is one parameter)
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def test_gpt_has_nanogpts_size():
    model = gpt(vocab=65)  # nanoGPT's Shakespeare-char config: 6 x 6 heads x 384, block 256, 65 symbols
    c, layers, vocab, block = 384, 6, 65, 256
    # Per block: two LayerNorms (weight + bias) 4c, attention qkv 3c^2 + projection c^2, MLP 8c^2
    # (no linear biases); token and position embeddings; final LayerNorm; the head is tied.
    by_hand = layers * (12 * c * c + 4 * c) + vocab * c + block * c + 2 * c
    assert sum(p.numel() for p in model.parameters()) == by_hand == 10_750_080
    # nanoGPT reports 10.65M, counting without the position embedding
    assert round((by_hand - block * c) / 1e6, 2) == 10.65


def test_gpt_refuses_windows_that_do_not_match_its_context():
    cfg = OmegaConf.merge(OmegaConf.load("conf/model/gpt.yaml"), TINY_GPT)
    with pytest.raises(ValueError, match=r"shape \(16,\), the model's block_size is 8"):
        build_model(cfg, input_shape=(16,), num_classes=11)
