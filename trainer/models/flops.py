"""Model FLOPs per token of a transformer, counted as nanoGPT's ``estimate_mfu`` counts them
(after PaLM, Chowdhery et al. 2022, appendix B).

A token's forward and backward pass costs 6 FLOPs per weight it meets (2 forward, 4 backward):
6N, with N the parameters without the position embeddings (a table lookup, no multiply). The
attention scores and their weighted sum add 12·L·H·Q·T: per layer L, head H of width Q, and each
of the T positions it attends over (forward 2·2·Q·T, three times that with the backward).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from trainer.models.gpt import GPT


@dataclass(frozen=True)
class TransformerShape:
    """What the FLOPs count needs of a model: N (parameters, position embeddings left out), layers,
    heads and each head's width."""

    n_params: int
    n_layer: int
    n_head: int
    head_dim: int


def flops_per_token(shape: TransformerShape, seq_len: int) -> int:
    """Forward + backward FLOPs per token trained on, at context ``seq_len``: 6N + 12·L·H·Q·T."""
    return 6 * shape.n_params + 12 * shape.n_layer * shape.n_head * shape.head_dim * seq_len


def transformer_shape(model: nn.Module) -> TransformerShape | None:
    """The shape of our :class:`~trainer.models.gpt.GPT` (under DDP's wrapper too), or of a model
    with a Hugging Face config (``num_hidden_layers``, ``num_attention_heads``, ``hidden_size``;
    N counts all its parameters); None for any other model."""
    model = getattr(model, "module", model)
    n_params = sum(p.numel() for p in model.parameters())  # a tied weight is one parameter, counted once
    if isinstance(model, GPT):
        heads = model.blocks[0].attn.n_head
        return TransformerShape(n_params - model.wpe.weight.numel(), len(model.blocks), heads,
                                model.wpe.weight.shape[1] // heads)
    config = getattr(model, "config", None)
    sizes = [getattr(config, name, None) for name in ("num_hidden_layers", "num_attention_heads", "hidden_size")]
    if not all(isinstance(size, int) and size > 0 for size in sizes):
        return None
    layers, heads, width = sizes
    return TransformerShape(n_params, layers, heads, width // heads)
