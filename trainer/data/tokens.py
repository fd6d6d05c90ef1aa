"""``data=tokens``: nanoGPT's token files, read from the disk batch by batch.

``data.path`` is a folder holding ``train.bin`` and ``val.bin``: each one long sequence of token
ids as ``np.ndarray.tofile`` or nanoGPT's ``np.memmap`` writes them (``data.dtype``: ``uint16``, what nanoGPT's
``prepare.py`` scripts write, or ``uint32`` for a vocabulary past 65536), and optionally
``meta.pkl`` (a dict with ``vocab_size``, and for character data ``itos``/``stoi``). The
vocabulary size is ``data.vocab_size``, else meta.pkl's.

An example is a window of ``block_size + 1`` consecutive tokens: the first ``block_size`` are the
input, the last ``block_size`` the targets (every position predicts the next token). Training
batch i of epoch e holds ``batch_size`` windows at offsets drawn uniformly from
0..N-block_size-1 (N tokens in train.bin) by a CPU generator seeded with (seed, e, i): nanoGPT's
sampling, made a pure function of the batch's index, so a resumed run (at any world size: the
ranks take their slices of each global batch by index, :func:`~trainer.data.loading.rank_batches`)
reads the very windows the uninterrupted run read, and every device gets the same ones.

An epoch is ``data.windows_per_epoch`` windows (default: as many as fit end to end in train.bin,
(N - 1) // block_size). Windows are drawn with replacement, so an epoch is a unit of training
length only: it sets how often the run validates and checkpoints (``trainer.val_every_n_epochs``)
and what ``trainer.max_epochs`` counts.

Validation reads fixed windows of val.bin: every whole window end to end (default), or
``data.val_windows`` windows at evenly spaced offsets, the first at 0 and the last at the end.
``val/loss`` is the mean cross-entropy per predicted token, in nats.

Neither split is loaded: each batch reads its windows from the files, one positioned read per
window into the batch's own array, so the process's resident memory does not grow with the files
(measured by ``scripts/token_memory.py``; figures in docs/transformers.md). A token id past
the vocabulary is a :class:`~trainer.errors.DataError` naming the split, the window's offset and
the file.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.batches import Batch, batch_generator, batches_per_epoch
from trainer.data.codecs import TIKTOKEN_PREFIX, codec_of
from trainer.data.source import DataSpec, with_spec
from trainer.errors import ConfigError, DataError, one_line, require
from trainer.files import write_atomic
from trainer.params import Param, declare

DTYPES = ("uint16", "uint32")
#: Tokens of each file checked against the vocabulary before training (a file read with the wrong
#: dtype shows at once); the rest is checked as each batch reads it.
HEAD_TOKENS = 1 << 16
#: What the run directory keeps so that ``python -m trainer.sample`` can rebuild and decode the model.
TOKENS_JSON = "tokens.json"


class _PlainUnpickler(pickle.Unpickler):
    """Reads dicts, lists, strings and numbers only: a pickle that names a class or a function
    could run any code when loaded, and nanoGPT's meta.pkl needs neither."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}; only plain dicts, strings and numbers are read")


def read_meta(folder: Path) -> dict | None:
    """``folder/meta.pkl`` (nanoGPT's: ``vocab_size``, ``itos``, ``stoi``), or None when there is none."""
    path = folder / "meta.pkl"
    if not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            meta = _PlainUnpickler(file).load()
    except Exception as error:  # unpickling fails in many ways: a damaged file, a foreign object
        raise ConfigError("data.path", f"cannot read {path}: {one_line(error, 160)}") from None
    if not isinstance(meta, dict):
        raise ConfigError("data.path", f"{path} holds a {type(meta).__name__}, not nanoGPT's dict of vocab_size, itos")
    return meta


class ShortFile(EOFError):
    """A window runs past the end of its file (one cut short after the run started)."""

    def __init__(self, start: int, message: str) -> None:
        super().__init__(message)
        self.start = start


@dataclass(frozen=True)
class TokenFile:
    """One split's file of ``length`` token ids of ``dtype``."""

    path: Path
    dtype: str
    length: int

    @classmethod
    def open(cls, folder: Path, split: str, dtype: str) -> TokenFile:
        path = folder / f"{split}.bin"
        require(path.is_file(), "data.path", f"no {path.name} in {folder}: give a folder of nanoGPT's train.bin and "
                                             "val.bin (e.g. data/openwebtext after its prepare.py)")
        size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
        require(size % itemsize == 0, "data.dtype", f"{path} holds {size} bytes, not a whole number of {dtype} "
                                                    f"tokens ({itemsize} bytes each): set data.dtype to the file's")
        return cls(path, dtype, size // itemsize)

    def windows(self, starts: Sequence[int], size: int) -> np.ndarray:
        """The ``size`` tokens from each of ``starts``, one row each, each read by one positioned read
        (``preadv``) straight into the array: nothing of the file is mapped into this process. (An
        ``np.memmap`` maps the page cache's whole folios, up to 2 MB around each window on a recent
        Linux: 120 MB more for a batch of 64 windows, measured in docs/transformers.md.)"""
        rows = np.empty((len(starts), size), dtype=self.dtype)
        itemsize = rows.itemsize
        with self.path.open("rb", buffering=0) as file:
            for row, start in zip(rows, starts):
                got = os.preadv(file.fileno(), [memoryview(row).cast("B")], int(start) * itemsize)
                if got != size * itemsize:
                    raise ShortFile(int(start), f"the file ends {got // itemsize} tokens after this offset, not "
                                                f"{size}: did it change during the run?")
        return rows


def read_windows(file: TokenFile, starts: Sequence[int], size: int, vocab_size: int, split: str) -> torch.Tensor:
    """Windows of ``size`` tokens at ``starts`` of ``file`` as int64, (len(starts), size); a
    DataError naming the split, offset and file if one holds an id outside the vocabulary."""
    try:
        windows = file.windows(starts, size)
    except ShortFile as short:
        raise DataError(split, [short.start], str(short), str(file.path)) from None
    except OSError as error:  # removed or unreadable mid-run
        raise DataError(split, [int(starts[0])], one_line(error), str(file.path)) from None
    if windows.size and windows.max() >= vocab_size:
        row = int((windows >= vocab_size).any(axis=1).argmax())
        raise DataError(split, [int(starts[row])], f"the window at this token offset holds token id "
                        f"{int(windows[row].max())}, outside the vocabulary 0..{vocab_size - 1}", str(file.path),
                        "set data.vocab_size (or data.dtype) to the file's")
    return torch.from_numpy(windows.astype(np.int64))


def on_device(windows: torch.Tensor, device: torch.device) -> Batch:
    """(inputs, targets): the first and the last ``block_size`` tokens of each window, on ``device``
    (copied from pinned memory without blocking on CUDA)."""
    if device.type == "cuda":
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]


@dataclass(frozen=True)
class TokenWindows:
    """One epoch of ``num_batches`` batches of ``batch_size`` random windows of ``file``."""

    file: TokenFile
    block_size: int
    vocab_size: int
    batch_size: int
    num_batches: int
    seed: int
    epoch: int
    device: torch.device

    def __len__(self) -> int:
        return self.num_batches

    def starts(self, i: int) -> list[int]:
        """Batch i's window offsets: a pure function of (seed, epoch, i), drawn on the CPU."""
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} of an epoch of {self.num_batches}")
        generator = batch_generator(torch.device("cpu"), seed=self.seed, epoch=self.epoch, batch=i)
        # The last start whose window and its one-token-later target both fit: length - block_size - 1.
        return torch.randint(0, self.file.length - self.block_size, (self.batch_size,), generator=generator).tolist()

    def __getitem__(self, i: int) -> Batch:
        windows = read_windows(self.file, self.starts(i), self.block_size + 1, self.vocab_size, "train")
        return on_device(windows, self.device)


def val_count(length: int, block_size: int, count: int | None) -> int:
    """Validation windows in a split of ``length`` tokens: ``count``, else every whole window end to end."""
    return (length - 1) // block_size if count is None else count


def val_starts(length: int, block_size: int, count: int | None, first: int, stop: int) -> list[int]:
    """Offsets of validation windows ``first..stop-1`` (of :func:`val_count`): end to end (``count``
    None), or ``count`` evenly spaced from 0 to the last that fits. Computed a batch at a time: a
    list of every offset would grow with the file."""
    index = np.arange(first, stop, dtype=np.int64)
    if count is None:
        return (index * block_size).tolist()
    last = length - block_size - 1
    return (index * last // max(count - 1, 1)).tolist()


@dataclass(frozen=True)
class TokenFiles:
    """``train.bin`` and ``val.bin`` of a folder, read per batch (see the module's docstring)."""

    folder: Path
    train: TokenFile
    val: TokenFile
    block_size: int
    vocab_size: int
    windows_per_epoch: int
    val_windows: int | None = None  # None: every whole window of val.bin end to end
    tokenizer: str | None = None  # data.tokenizer, for python -m trainer.sample
    device: torch.device = torch.device("cpu")

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    @property
    def num_train(self) -> int:
        """Windows per epoch (``data.windows_per_epoch``)."""
        return self.windows_per_epoch

    def to(self, device: torch.device) -> TokenFiles:
        """The files stay on the disk; batches are read to ``device``."""
        return replace(self, device=device)

    def train_epoch(self, batch_size: int, *, seed: int, epoch: int) -> TokenWindows:
        return TokenWindows(self.train, self.block_size, self.vocab_size, batch_size,
                            batches_per_epoch(self.windows_per_epoch, batch_size), seed, epoch, self.device)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """The fixed validation windows, in order, ``batch_size`` at a time (the last batch short)."""
        count = val_count(self.val.length, self.block_size, self.val_windows)
        for first in range(0, count, batch_size):
            starts = val_starts(self.val.length, self.block_size, self.val_windows, first, min(first + batch_size, count))
            yield on_device(read_windows(self.val, starts, self.block_size + 1, self.vocab_size, "val"), self.device)

    def write_files(self, run_dir: Path) -> Path:
        """``tokens.json`` (the vocabulary size and the tokenizer) and the tokenizer's own file
        (``tokenizer.json``, or the folder's ``meta.pkl``), for ``python -m trainer.sample``."""
        decoder = None
        meta = read_meta(self.folder)
        if self.tokenizer is not None and self.tokenizer.startswith(TIKTOKEN_PREFIX):
            decoder = self.tokenizer
        elif self.tokenizer is not None:
            write_atomic(run_dir / "tokenizer.json", Path(self.tokenizer).expanduser().read_bytes())
            decoder = "tokenizer.json"
        if meta is not None:
            write_atomic(run_dir / "meta.pkl", (self.folder / "meta.pkl").read_bytes())
            decoder = decoder or ("meta.pkl" if "itos" in meta else None)
        path = run_dir / TOKENS_JSON
        write_atomic(path, json.dumps({"vocab_size": self.vocab_size, "block_size": self.block_size,
                                       "tokenizer": decoder}) + "\n")
        return path


def _folder(path: str | None) -> Path:
    require(path is not None, "data.path", "missing: set data.path to a folder of nanoGPT's train.bin and val.bin")
    folder = Path(path).expanduser()
    require(folder.is_dir(), "data.path", f"{folder} is not a folder: give the folder that holds train.bin and val.bin")
    return folder


def _vocab_size(folder: Path, vocab_size: int | None) -> int:
    """``data.vocab_size``, else meta.pkl's; the given one may pad meta.pkl's (nanoGPT: 50257 -> 50304)."""
    meta = read_meta(folder)
    found = meta.get("vocab_size") if meta is not None else None
    if vocab_size is None:
        require(isinstance(found, int) and found >= 1, "data.vocab_size",
                f"{folder} has no meta.pkl with a vocab_size: set data.vocab_size (e.g. 50304 for GPT-2's "
                "50257 tokens, padded as nanoGPT does)")
        return found
    require(not isinstance(found, int) or vocab_size >= found, "data.vocab_size",
            f"{vocab_size} is below the vocab_size={found} of {folder / 'meta.pkl'}: the model could not predict "
            "every token; leave it unset or raise it")
    return vocab_size


def _spec(*, path: str | None, dtype: str, vocab_size: int | None, block_size: int,
          windows_per_epoch: int | None, **_: object) -> DataSpec:
    """The shape, vocabulary and epoch of the folder, from its files' sizes and meta.pkl alone."""
    folder = _folder(path)
    train = TokenFile.open(folder, "train", dtype)
    return DataSpec((block_size,), _vocab_size(folder, vocab_size), windows_per_epoch or (train.length - 1) // block_size)


def _check_split(file: TokenFile, block_size: int, vocab_size: int) -> None:
    require(file.length >= block_size + 1, "model.block_size",
            f"{file.path} holds {file.length} tokens, too few for one window of block_size={block_size} plus its "
            "target: use more data or a smaller model.block_size")
    head = file.windows([0], min(file.length, HEAD_TOKENS))
    require(int(head.max()) < vocab_size, "data.dtype",
            f"{file.path} read as {file.dtype} holds token id {int(head.max())} in its first {head.size} tokens, "
            f"outside the vocabulary of {vocab_size}: set data.dtype (nanoGPT writes uint16) or data.vocab_size")


@with_spec(_spec)
@declare(
    path=Param(None, "folder holding train.bin and val.bin (nanoGPT's format), and optionally meta.pkl", str,
               extra=(None,)),
    dtype=Param("uint16", "token id type of the .bin files", str, choices=DTYPES),
    vocab_size=Param(None, "token ids 0..vocab_size-1 (may pad the tokenizer's); null: meta.pkl's vocab_size", int,
                     low=1, extra=(None,)),
    block_size=Param(256, "tokens per window: the model's context (model.block_size)", int, low=1),
    windows_per_epoch=Param(None, "random training windows per epoch (how often the run validates and "
                            "checkpoints); null: as many as fit end to end in train.bin", int, low=1, extra=(None,)),
    val_windows=Param(None, "validation windows, evenly spaced over val.bin; null: every whole window end to end",
                      int, low=1, extra=(None,)),
    tokenizer=Param(None, "what decodes the ids for python -m trainer.sample: a Hugging Face tokenizer.json, or "
                    "tiktoken:NAME (e.g. tiktoken:gpt2); null: meta.pkl's itos, if any", str, extra=(None,)),
)
def tokens(
    *, path: str | None, dtype: str, vocab_size: int | None, block_size: int, windows_per_epoch: int | None,
    val_windows: int | None, tokenizer: str | None,
) -> TokenFiles:
    """``data=tokens``: the folder's train.bin and val.bin, checked before training (files, dtype,
    vocabulary, the tokenizer's size) and read per batch."""
    folder = _folder(path)
    vocab = _vocab_size(folder, vocab_size)
    train, val = TokenFile.open(folder, "train", dtype), TokenFile.open(folder, "val", dtype)
    for file in (train, val):
        _check_split(file, block_size, vocab)
    if tokenizer is not None and not tokenizer.startswith(TIKTOKEN_PREFIX):  # tiktoken's files may live elsewhere
        size = codec_of(tokenizer, "data.tokenizer").vocab_size
        require(size <= vocab, "data.tokenizer", f"{tokenizer} has {size} tokens, more than data.vocab_size={vocab}")
    return TokenFiles(folder, train, val, block_size, vocab, windows_per_epoch or (train.length - 1) // block_size,
                      val_windows, tokenizer)

