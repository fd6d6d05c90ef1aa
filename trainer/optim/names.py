"""Module names as the optimizer keys use them (``optimizer.lr_scales``, ``optimizer.layer_order``,
``trainer.unfreeze``): a parameter belongs to a module when its name is the module's or under it."""

from __future__ import annotations

from torch import nn


def under(name: str, module: str) -> bool:
    """Whether parameter ``name`` belongs to ``module`` (or is it): ``layer1.0.weight`` is under ``layer1``."""
    return name == module or name.startswith(module + ".")


def names_nothing(model: nn.Module, module: str) -> str:
    """The error for a module name that holds no parameters of ``model``: its top-level modules."""
    children = ", ".join(name for name, _ in model.named_children())
    return f"{module} names no parameters of this model; its top-level modules are {children} (nest with dots, e.g. layer1.0)"
