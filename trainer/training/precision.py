"""Device and mixed-precision policy: which autocast dtype, and whether a GradScaler runs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from trainer.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", "cuda was asked for but no CUDA device is visible; use trainer.device=cpu")
    return torch.device(name)


def configure_cuda(*, tf32: bool) -> None:
    """Process-wide CUDA settings for training: cuDNN autotuning (every training batch has the
    same shape, so the one-off search pays), and TensorFloat-32 for fp32 matmuls and convolutions
    when ``tf32`` (10-bit mantissa, like bf16 autocast's own precision loss, several times faster)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


@dataclass(frozen=True)
class Precision:
    """How forward passes run: ``dtype`` None means plain fp32 (no autocast)."""

    name: str
    device: torch.device
    dtype: torch.dtype | None

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return self.dtype is torch.float16

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The scaler every update goes through.

        fp16 gets the usual dynamic loss scale. On CUDA, fp32/bf16 get a scale of 1 that never
        grows: it changes no value (scales stay powers of two, so scaling is exact) but lets the
        scaler skip an update whose gradients are not finite on the device, with no host sync
        when the optimizer is fused. On the CPU reading a value costs no sync, so there the
        scaler is off and the step skips non-finite updates on the host (3-4 fewer passes).
        """
        if self.uses_grad_scaler:
            return torch.amp.GradScaler(self.device.type)
        if self.device.type == "cpu":
            return torch.amp.GradScaler("cpu", enabled=False)
        return unit_grad_scaler(self.device.type)


def unit_grad_scaler(device_type: str) -> torch.amp.GradScaler:
    """A GradScaler whose scale is 1: it only finds and skips non-finite steps. Update it with
    ``update(1.0)``: a plain ``update()`` would halve the scale at every skip (backoff_factor
    must be < 1) and, with growth disabled, never restore it."""
    return torch.amp.GradScaler(device_type, init_scale=1.0, growth_interval=2**30)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto`` = bf16 on CUDA devices that support it, else fp32; fp16 needs CUDA."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(
            "trainer.precision",
            f"fp16 autocast with loss scaling needs CUDA, and the device is {device.type}; "
            "use trainer.precision=bf16 or fp32",
        )
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision", "this GPU has no bf16 support; use trainer.precision=fp16 or fp32")
    return Precision(name=name, device=device, dtype=_DTYPES[name])


def check_precision(name: str, strategy: str) -> None:
    """fp16's loss scaling reads each rank's gradients whole; FSDP2's are shards."""
    if name == "fp16" and strategy == "fsdp":
        raise ConfigError("trainer.precision", "fp16 loss scaling is not supported with trainer.strategy=fsdp: use bf16")
