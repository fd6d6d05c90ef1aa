"""A user's optimizer that writes down the LR of every step it takes, per rank: what each process
actually applied, where only rank 0 writes the run's logs."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class RecordingAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that appends each step's group LRs to ``record_dir/rank<RANK>.txt``
    (``RANK`` from the launcher; 0 without one), one line per step."""

    def __init__(self, params, lr: float = 1e-3, *, record_dir: str, weight_decay: float = 0.01,
                 foreach: bool | None = None, fused: bool | None = None) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, foreach=foreach, fused=fused)
        self.record = Path(record_dir) / f"rank{os.environ.get('RANK', '0')}.txt"

    def step(self, closure=None):
        with open(self.record, "a") as f:
            f.write(" ".join(repr(group["lr"]) for group in self.param_groups) + "\n")
        return super().step(closure)
