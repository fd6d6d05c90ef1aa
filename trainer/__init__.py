"""trainer: a Hydra-configured PyTorch training harness built around exact LR schedules."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Public names imported only when first used, so ``import trainer`` stays light.
_LAZY = {"fit": "trainer.api", "lr_scheduler": "trainer.schedules.torch_adapter", "Preempted": "trainer.errors",
         "ConfigError": "trainer.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
