"""Tokens trained on and how fast: ``train/tokens``, ``perf/tokens_per_s`` and, on a CUDA device
the table below knows, ``perf/mfu`` (model FLOPs utilization, as nanoGPT's ``estimate_mfu``).

The rate is measured between the logger's reads, which wait for the device (one sync per read
already): the tokens of the updates done since the last read, over the wall-clock time since it.
Time spent validating or writing a checkpoint does not count: the next window opens at the first
update logged after it. The first update (warm-up, compilation) is never in a window.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import torch

#: Dense (no sparsity) bf16 tensor-core peak FLOP/s of one device, from the vendor's datasheet;
#: the first pattern found in ``torch.cuda.get_device_name`` decides. MFU is against this peak
#: whatever the run's precision (as nanoGPT's is against the A100's 312 TFLOP/s).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100 PCIe\b", 756e12),
    (r"\bH100 NVL\b", 835e12),
    (r"\bH100\b", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    (r"\bG?H200\b", 989e12),
    (r"\bB200\b", 2250e12),
    (r"\bA100\b", 312e12),
    (r"\bL40S\b", 362e12),
    (r"\bL4\b", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """One device's dense bf16 peak FLOP/s from :data:`PEAK_BF16_FLOPS`, or None when not listed."""
    return next((peak for pattern, peak in PEAK_BF16_FLOPS if re.search(pattern, device_name)), None)


def device_peak_flops(device: torch.device) -> float | None:
    """``device``'s peak (:func:`peak_flops`); None on a CPU or an unlisted GPU."""
    return peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilization: the model FLOPs done per second over the ``peak`` FLOP/s available."""
    return flops_per_token * tokens_per_s / peak


class Throughput:
    """The tokens of the first n updates (over all ranks: ``tokens_before(n)``, asked only right
    after update n - 1: a pure function of n, whose updates may differ in size under a batch ramp,
    or a count of padded rows' tokens that keeps its newest stamps), and optionally the model
    FLOPs per token and the peak FLOP/s of all ranks' devices together (then MFU is logged too)."""

    def __init__(self, tokens_before: Callable[[int], int], *, flops_per_token: float | None = None,
                 peak: float | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.tokens_before, self.flops_per_token, self.peak, self.clock = tokens_before, flops_per_token, peak, clock
        self._since: tuple[int, float, int] | None = None  # (updates done, time, tokens) the open window starts at

    def tokens(self, update: int) -> int:
        """Tokens trained on by the end of 0-based update ``update`` (asked right after it)."""
        return self.tokens_before(update + 1)

    def logged(self, update: int) -> None:
        """Update ``update`` was just logged: open a window after it, if none is open."""
        if self._since is None:
            self._since = (update + 1, self.clock(), self.tokens(update))

    def pause(self) -> None:
        """Something other than training follows (a validation, a checkpoint): close the window unmeasured."""
        self._since = None

    def measure(self, updates_done: int) -> dict[str, float]:
        """At a sync, ``updates_done`` updates done: the rates since the window opened (none if it
        holds no update), and a new window from here."""
        now, since, tokens = self.clock(), self._since, self.tokens_before(updates_done)
        self._since = (updates_done, now, tokens)
        if since is None or updates_done <= since[0] or now <= since[1]:
            return {}
        rate = (tokens - since[2]) / (now - since[1])
        rates = {"perf/tokens_per_s": rate}
        if self.flops_per_token is not None and self.peak is not None:
            rates["perf/mfu"] = mfu(self.flops_per_token, rate, self.peak)
        return rates
