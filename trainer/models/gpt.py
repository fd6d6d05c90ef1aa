"""A decoder-only transformer language model (GPT-2 style, pre-norm), after nanoGPT.

Tokens (B, T) -> logits (B, T, vocab) for the next token at every position. Causal attention
goes through ``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA); the
output projection shares its weight with the token embedding (weight tying); linear layers have
no biases. Initialisation is GPT-2's: N(0, 0.02), with the residual output projections scaled
by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from trainer.models.common import DROPOUT
from trainer.params import Param, declare


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        # (B, T, 3C) -> three (B, n_head, T, head_dim) tensors
        q, k, v = self.qkv(x).view(batch, time, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_dropout(self.proj(y.transpose(1, 2).reshape(batch, time, width)))


class Block(nn.Module):
    #: A repeated residual block: FSDP2 shards it on its own (trainer.distributed.blocks_to_shard).
    is_block = True

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
            nn.Linear(4 * n_embd, n_embd, bias=False), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """``n_layer`` blocks of ``n_head``-head attention, ``n_embd`` wide, context ``block_size`` tokens."""

    def __init__(self, *, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        # Depths for optimizer.layer_decay (trainer.optim.layer_decay): the embeddings, each block, the
        # final norm (the tied head's weight is wte's, at depth 0).
        self.layer_order = (("wte", "wpe"), *(f"blocks.{i}" for i in range(n_layer)), "ln_f")
        self.apply(self._init)
        for block in self.blocks:
            for residual_out in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(residual_out.weight, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        time = tokens.shape[1]
        if time > self.block_size:
            raise ValueError(f"sequence of {time} tokens is longer than block_size={self.block_size}")
        positions = torch.arange(time, device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@declare(
    n_layer=Param(6, "transformer blocks", int, low=1),
    n_head=Param(6, "attention heads per block (n_embd must be a multiple)", int, low=1),
    n_embd=Param(384, "width of the residual stream", int, low=1),
    block_size=Param(256, "context length in tokens; also the data's window length", int, low=1),
    dropout=Param(0.2, DROPOUT.doc, float, low=0, high=1, high_open=True),
)
def build_gpt(
    *, input_shape: tuple[int, ...], num_classes: int, n_layer: int, n_head: int, n_embd: int, block_size: int,
    dropout: float,
) -> nn.Module:
    """A :class:`GPT` over a vocabulary of ``num_classes`` tokens (the data's); ``input_shape`` is (block_size,)."""
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} is not a multiple of n_head={n_head}")
    if tuple(input_shape) != (block_size,):
        raise ValueError(f"the data's windows have shape {tuple(input_shape)}, the model's block_size is {block_size}")
    return GPT(vocab_size=num_classes, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
