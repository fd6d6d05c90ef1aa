"""train/tokens, perf/tokens_per_s and perf/mfu: the FLOPs count against nanoGPT's own, the device
table, and the measured windows on a fake clock (no test times anything)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from trainer.models.flops import TransformerShape, flops_per_token, transformer_shape
from trainer.models.gpt import GPT
from trainer.rundir.throughput import Throughput, mfu, peak_flops


def nanogpt_estimate_mfu(n_params, n_layer, n_head, n_embd, block_size, fwdbwd_per_iter, dt):
    """karpathy/nanoGPT model.py GPT.estimate_mfu, its config read from the arguments."""
    N = n_params  # noqa: N806 (nanoGPT's names)
    L, H, Q, T = n_layer, n_head, n_embd // n_head, block_size  # noqa: N806
    flops_per_token = 6 * N + 12 * L * H * Q * T
    flops_per_fwdbwd = flops_per_token * T
    flops_per_iter = flops_per_fwdbwd * fwdbwd_per_iter
    flops_achieved = flops_per_iter * (1.0 / dt)  # per second
    flops_promised = 312e12  # A100 GPU bfloat16 peak flops is 312 TFLOPS
    return flops_achieved / flops_promised


# GPT-2 124M as nanoGPT builds it for OpenWebText: vocabulary 50304, no biases; get_num_params()
# leaves the position embeddings out: 50304·768 + 12 · (12·768² + 2·768) + 768.
GPT2_N = 50304 * 768 + 12 * (12 * 768 * 768 + 2 * 768) + 768


@pytest.mark.parametrize("dt, fwdbwd", [(0.135, 60), (1.0, 480), (0.02, 12)])
def test_mfu_is_nanogpts_estimate(dt, fwdbwd):
    assert GPT2_N == 123_587_328  # nanoGPT prints "number of parameters: 123.59M"
    per_token = flops_per_token(TransformerShape(GPT2_N, 12, 12, 64), seq_len=1024)
    assert per_token == 6 * 123_587_328 + 12 * 12 * 12 * 64 * 1024 == 854_770_176
    tokens_per_s = fwdbwd * 1024 / dt  # fwdbwd_per_iter sequences of 1024 tokens per iteration of dt seconds
    expected = nanogpt_estimate_mfu(GPT2_N, 12, 12, 768, 1024, fwdbwd, dt)
    assert mfu(per_token, tokens_per_s, 312e12) == pytest.approx(expected, rel=1e-12)


def test_our_gpts_shape_counts_every_weight_but_the_position_embeddings_once():
    model = GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=8, dropout=0.0)
    # wte 50·8 (tied to the head: once), per block 2 LayerNorms of 2·8, qkv 8·24, proj 8·8, MLP 2·8·32; ln_f 2·8
    per_block = 2 * 16 + 8 * 24 + 8 * 8 + 2 * 8 * 32
    assert transformer_shape(model) == TransformerShape(50 * 8 + 2 * per_block + 16, n_layer=2, n_head=2, head_dim=4)
    assert transformer_shape(SimpleNamespace(module=model, parameters=None)) == transformer_shape(model)  # DDP's wrapper
    assert transformer_shape(nn.Linear(3, 4)) is None


def test_a_hugging_face_config_gives_the_shape():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=3, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    shape = transformer_shape(model)
    assert shape == TransformerShape(sum(p.numel() for p in model.parameters()), n_layer=3, n_head=4, head_dim=4)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12), ("NVIDIA B200", 2250e12),
    ("NVIDIA RTX A1000", None), ("NVIDIA A10", None), ("NVIDIA GeForce RTX 4090", None), ("Tesla V100-SXM2-16GB", None),
])
def test_the_peak_table_matches_whole_model_names(name, peak):
    assert peak_flops(name) == peak


def test_rates_are_measured_between_reads_and_leave_out_what_is_not_training():
    now = [0.0]
    meter = Throughput(lambda updates: 1000 * updates, flops_per_token=6e6, peak=2e12, clock=lambda: now[0])
    assert meter.tokens(0) == 1000 and meter.tokens(9) == 10_000
    meter.logged(0)  # the window opens after update 0 (its time holds the warm-up)
    now[0] = 2.0
    meter.logged(1)  # already open: no change
    now[0] = 4.0
    rates = meter.measure(5)  # updates 1..4 in 4 s
    assert rates == {"perf/tokens_per_s": 1000.0, "perf/mfu": pytest.approx(6e6 * 1000 / 2e12)}
    now[0] = 6.0
    assert meter.measure(7) == {"perf/tokens_per_s": 1000.0, "perf/mfu": pytest.approx(3e-3)}  # 2 updates in 2 s
    meter.pause()  # a validation: from 6 s to 100 s
    now[0] = 100.0
    assert meter.measure(8) == {}  # nothing measured across it
    meter.pause()
    meter.logged(8)
    now[0] = 101.0
    assert meter.measure(10) == {"perf/tokens_per_s": 1000.0, "perf/mfu": pytest.approx(3e-3)}  # update 9 in 1 s
    assert Throughput(lambda updates: 10 * updates, clock=lambda: now[0]).measure(3) == {}  # no window open yet
