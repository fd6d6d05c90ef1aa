"""Character-level language-model data: one long token sequence per split, cut into windows.

An example is a window of ``block_size`` tokens; its targets are the same window shifted by one
token, so every position predicts the next character. Training batches are windows at random
offsets (nanoGPT's sampling), drawn from a generator seeded with (seed, epoch, batch) so a
resumed run re-creates them exactly; an "epoch" is as many windows as fit end to end in the
split. Validation reads the split once, in non-overlapping windows, so ``val/loss`` is the mean
cross-entropy per predicted character in nats.

The whole text is held in memory, as the smallest integer type its vocabulary fits (1 byte per
character up to 256 characters): about the file's size again for an ASCII text, plus the text
itself while it is split. A corpus larger than memory is tokenized once into nanoGPT's files and
read with ``data=tokens`` (:mod:`trainer.data.tokens`), whose memory does not grow with the data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from trainer.data.batches import Batch, batch_generator, batches_per_epoch
from trainer.files import write_atomic

#: Characters encoded at a time: the int64 ids of one chunk are the most memory encoding adds.
ENCODE_CHUNK = 1 << 20


def encode(text: str, vocab: str, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Token ids (one per character, of ``dtype``) of ``text`` over ``vocab`` (sorted characters,
    id = position), encoded a chunk at a time."""
    table = torch.tensor([ord(c) for c in vocab])
    ids = torch.empty(len(text), dtype=dtype)
    for start in range(0, len(text), ENCODE_CHUNK):
        chunk = text[start : start + ENCODE_CHUNK]
        codes = torch.frombuffer(bytearray(chunk.encode("utf-32-le")), dtype=torch.int32).long()
        found = torch.searchsorted(table, codes)
        if found.max() >= len(vocab) or not torch.equal(table[found], codes):
            raise ValueError("text has characters outside the vocabulary")
        ids[start : start + len(chunk)] = found
    return ids


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type holding ids 0..vocab_size-1: 1 byte per character up to 256
    characters, 2 up to 32768, else 4 (int64 would be 8); batches are widened to int64 as cut."""
    if vocab_size <= 256:
        return torch.uint8
    return torch.int16 if vocab_size <= 1 << 15 else torch.int32


def decode(ids: torch.Tensor, vocab: str) -> str:
    """The characters of token ids ``ids`` (any shape, read in order)."""
    return "".join(vocab[i] for i in ids.flatten().tolist())


@dataclass(frozen=True)
class WindowBatches:
    """One epoch of ``num_batches`` batches of ``batch_size`` random windows of ``tokens``."""

    tokens: torch.Tensor
    block_size: int
    batch_size: int
    num_batches: int
    seed: int
    epoch: int
    offsets: torch.Tensor = field(init=False)  # 0..block_size, on tokens' device

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", torch.arange(self.block_size + 1, device=self.tokens.device))

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> Batch:
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} of an epoch of {self.num_batches}")
        generator = batch_generator(self.tokens.device, seed=self.seed, epoch=self.epoch, batch=i)
        # The last start whose window and its one-token-later target both fit: len - block_size - 1.
        starts = torch.randint(
            0, len(self.tokens) - self.block_size, (self.batch_size, 1), generator=generator, device=self.tokens.device
        )
        windows = self.tokens[starts + self.offsets].long()
        return windows[:, :-1], windows[:, 1:]


@dataclass(frozen=True)
class TokenDataset:
    """Train and validation token sequences (1-D, of any integer type: :func:`id_dtype` when split
from a text) over the character vocabulary ``vocab``; batches are int64.

    ``input_shape`` is one example's shape, (block_size,); ``num_classes`` is the vocabulary size.
    """

    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    block_size: int
    vocab: str

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    @property
    def num_train(self) -> int:
        """Windows per epoch: as many as fit end to end in the training split."""
        return (len(self.train_tokens) - 1) // self.block_size

    def to(self, device: torch.device) -> TokenDataset:
        return replace(self, train_tokens=self.train_tokens.to(device), val_tokens=self.val_tokens.to(device))

    def train_epoch(self, batch_size: int, *, seed: int, epoch: int) -> WindowBatches:
        return WindowBatches(
            self.train_tokens, self.block_size, batch_size, batches_per_epoch(self.num_train, batch_size), seed, epoch
        )

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """Every whole window of the validation split, end to end, in order."""
        count = (len(self.val_tokens) - 1) // self.block_size
        span = count * self.block_size
        inputs = self.val_tokens[:span].view(count, self.block_size)
        targets = self.val_tokens[1 : span + 1].view(count, self.block_size)
        for start in range(0, count, batch_size):
            yield inputs[start : start + batch_size].long(), targets[start : start + batch_size].long()

    def write_files(self, run_dir: Path) -> Path:
        """Write ``vocab.json`` (the characters in id order) so samples can be decoded later (a
        dataset's ``write_files`` is called once, on rank 0, before training starts)."""
        path = run_dir / "vocab.json"
        write_atomic(path, json.dumps({"chars": self.vocab, "size": len(self.vocab)}, ensure_ascii=False) + "\n")
        return path


def split_text(text: str, *, block_size: int, train_fraction: float = 0.9) -> TokenDataset:
    """Tokenize ``text`` over its own sorted characters; the first ``train_fraction`` trains, the rest validates."""
    vocab = "".join(sorted(set(text)))
    tokens = encode(text, vocab, id_dtype(len(vocab)))
    cut = int(train_fraction * len(tokens))
    return TokenDataset(tokens[:cut], tokens[cut:], block_size, vocab)
