"""Precision policy per device, and the mixed-precision paths that run here."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import compose_config
from trainer.app.run import train
from trainer.errors import ConfigError
from trainer.rundir.events import read_scalars
from trainer.training.precision import resolve_device, resolve_precision

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_policy():
    assert resolve_precision("auto", CPU).dtype is None
    assert resolve_precision("bf16", CPU).dtype is torch.bfloat16
    assert not resolve_precision("bf16", CPU).uses_grad_scaler
    with pytest.raises(ConfigError, match="trainer.precision: fp16 .* needs CUDA"):
        resolve_precision("fp16", CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_asking_for_cuda_without_one_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        resolve_device("cuda")
    assert error.value.key == "trainer.device"


def test_bf16_autocast_trains_on_cpu(tmp_path):
    metrics = train(compose_config("trainer.precision=bf16", "schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=5"), tmp_path)
    losses = [v for _, v in read_scalars(tmp_path)["train/loss"]]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert metrics["val/acc"] > 0.5  # 4 classes: chance is 0.25


@needs_cuda
def test_auto_is_bf16_on_cuda():
    precision = resolve_precision("auto", torch.device("cuda"))
    assert precision.dtype is torch.bfloat16


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda(tmp_path, precision):
    cfg = compose_config(
        f"trainer.precision={precision}", "trainer.device=cuda", "schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=5"
    )
    metrics = train(cfg, tmp_path)
    assert metrics["val/acc"] > 0.5
    norms = [v for _, v in read_scalars(tmp_path)["train/grad_norm"]]
    assert all(math.isfinite(n) for n in norms[1:])
    # fp16's loss scale is 2**16 at the start: a norm that large would mean clipping saw scaled grads
    assert max(norms) < 1e3


@needs_cuda
def test_convnets_run_channels_last_with_cudnn_autotuning_on_cuda():
    from trainer.app.build import build_optimization

    cfg = compose_config("model=cnn", "trainer.device=cuda", "trainer.tf32=false", base=[])
    model = build_optimization(cfg, num_train=60_000, input_shape=(1, 28, 28), num_classes=10,
                               device=torch.device("cuda")).model
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32


@needs_cuda
def test_the_dataloader_path_trains_and_validates_on_cuda(tmp_path):
    cfg = compose_config("trainer.device=cuda", "data.loader=dataloader", "data.num_workers=2", "schedule=cosine",
                         "optimizer.lr=0.01", "trainer.max_epochs=3")
    assert train(cfg, tmp_path)["val/acc"] > 0.5


@needs_cuda
def test_a_cpu_checkpoint_resumes_on_cuda(tmp_path):
    """CPU fp32 (foreach kernels, no scaler state) continued on a GPU in bf16 (fused kernels, unit scaler)."""
    common = ["schedule=cosine", "optimizer.lr=0.01", "schedule.total_steps=24"]
    train(compose_config(*common, "trainer.device=cpu", "trainer.max_epochs=1"), tmp_path)
    metrics = train(compose_config(*common, "trainer.device=cuda", "trainer.max_epochs=3", "trainer.resume=auto",
                                   "trainer.resume_schedule=override"), tmp_path)
    assert metrics["val/acc"] > 0.5
    assert [step for step, _ in read_scalars(tmp_path)["train/lr"]] == list(range(24))
