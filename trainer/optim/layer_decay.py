"""Layer-wise LR decay (``optimizer.layer_decay``): depth ``d`` of ``D`` trains at ``decay^(D - d)``
times its LR, so the bottom layers (general features) move least and the head most (seed 002).

Depth 0 is the embeddings or stem, each ResNet stage or GPT block is one deeper, the head is at
``D``. A shipped model says which modules make each depth in its ``layer_order`` attribute (a
sequence, bottom to top, of module names or tuples of names sharing a depth); any other model
names its modules in ``optimizer.layer_order``, one depth each.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trainer.errors import ConfigError
from trainer.optim.names import names_nothing, under

Levels = list[tuple[str, ...]]


def levels_of(model: nn.Module, layer_order: Sequence[str] | None) -> Levels:
    """The module names at each depth, bottom (0) to top (D): ``layer_order`` if given, else the
    model's own ``layer_order``."""
    if layer_order is not None:
        return [(str(name),) for name in layer_order]
    own = getattr(model, "layer_order", None)
    if own is None:
        children = ", ".join(name for name, _ in model.named_children())
        raise ConfigError(
            "optimizer.layer_order",
            f"{type(model).__name__} has no layer order of its own: list its modules bottom to top for "
            f"optimizer.layer_decay, e.g. optimizer.layer_order=[{children}]",
        )
    return [(level,) if isinstance(level, str) else tuple(level) for level in own]


def parameter_depths(model: nn.Module, levels: Levels) -> dict[str, int]:
    """Each parameter's depth: that of the longest listed module name it lies under. A name listed
    twice or without parameters, or a parameter under no listed name, is a ConfigError."""
    names = [name for name, _ in model.named_parameters()]
    owner: dict[str, int] = {}
    for depth, level in enumerate(levels):
        for module in level:
            if module in owner:  # the later depth would silently win
                raise ConfigError("optimizer.layer_order", f"{module} is listed at depths {owner[module]} and {depth}: "
                                                           "list each module once")
            owner[module] = depth
    for module in owner:
        if not any(under(name, module) for name in names):
            raise ConfigError("optimizer.layer_order", names_nothing(model, module))
    depths, unplaced = {}, []
    for name in names:
        holders = [module for module in owner if under(name, module)]
        if holders:
            depths[name] = owner[max(holders, key=len)]
        else:
            unplaced.append(name)
    if unplaced:
        raise ConfigError("optimizer.layer_order", f"no depth for {', '.join(unplaced[:5])}"
                                                   f"{' and more' if len(unplaced) > 5 else ''}: list its module too")
    return depths


def layer_scales(model: nn.Module, decay: float, layer_order: Sequence[str] | None = None) -> dict[str, tuple[int, float]]:
    """Parameter name -> (depth d, LR multiplier decay^(D - d))."""
    levels = levels_of(model, layer_order)
    top = len(levels) - 1
    return {name: (depth, decay ** (top - depth)) for name, depth in parameter_depths(model, levels).items()}
