"""Training data read as a stream, resumed by its state rather than by a batch index.

A map-style epoch is indexed (batch i of epoch e is a pure function of (seed, e, i)); a stream has
no index, only a position. Each rank reads its own share of the source (``Source.open``) and
makes micro-batches of it, in order; what it has read so far is a :class:`StreamState` of plain
data, which the checkpoint keeps (``trainer.controls.data_stream``), so a resumed run reads on
from the very next example:

- the source's own position (``datasets``' ``IterableDataset.state_dict()``, exact without a
  shuffle);
- the shuffle buffer, which is ours and whose rows are in the state: ``datasets``' buffered
  shuffle starts an empty buffer on resume, so examples are lost and others come twice
  (datasets#7901, #8408);
- the buffer's draws: the index of draw k of pass p is a hash of (seed, rank, p, k), so no
  generator's state needs keeping and nothing draws from the global generators;
- the tokens read but not yet in a packed block, and the micro-batches handed out.

The stream never ends: when a rank's share is read through, the buffer is drained and the next
pass begins (``datasets``' ``set_epoch`` analogue: the files' order of pass p is shuffled from
(seed, p)). An "epoch" of a stream is a number of micro-batches (``data.stream_examples``), not
a pass: the schedule, validation and checkpoints count them as they count a map-style epoch's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from trainer.data.batches import stream_seed
from trainer.data.named import LABELS, Batch, to_device
from trainer.errors import DataError, one_line

_MASK = (1 << 64) - 1


def draw(seed: int, rank: int, pass_index: int, picks: int, n: int) -> int:
    """A uniform index in 0..n-1 that is a pure function of its arguments: splitmix64 of
    (seed, pass, draw, rank), reduced mod ``n`` (the bias, under n / 2**64, is nil for a buffer)."""
    z = (stream_seed(seed=seed, epoch=pass_index, index=picks) * 1_000_037 + rank + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) % n


class Opened(Protocol):
    """One pass of one rank's share of a source: its rows, and where it is."""

    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`Source.open` resumes from: the position after the last row read."""


class Source(Protocol):
    """Rows of a stream, a pass at a time (``trainer.data.hf_dataset``: ``datasets`` on local files)."""

    def open(self, pass_index: int, *, rank: int, world_size: int, shuffle_seed: int | None,
             state: dict[str, Any] | None) -> Opened:
        """Rank ``rank``'s share of pass ``pass_index``, from ``state`` (None: the pass's start);
        ``shuffle_seed``: shuffle the order of the files from (shuffle_seed, pass_index)."""


class RowError(ValueError):
    """Row ``position`` of a list given to an :data:`Encode` cannot be used, and why; ``key``: the
    setting that names what is wrong with it (``data.text_column``)."""

    def __init__(self, position: int, why: str, key: str = "data") -> None:
        super().__init__(why)
        self.position, self.why, self.key = position, why, key


#: Rows to examples (``{input_ids: [...]}``, and ``labels`` for a classifier); raises RowError.
Encode = Callable[[list[Mapping[str, Any]]], list[dict[str, Any]]]


@dataclass
class StreamState:
    """Where one rank's stream is, as plain data for the checkpoint (see the module's docstring)."""

    pass_index: int = 0
    source: dict[str, Any] | None = None  # the source's state in this pass; None: its start
    exhausted: bool = False  # this pass's rows are all read: the buffer drains
    buffer: list[list[Any]] = field(default_factory=list)  # [row number in its pass, row]
    picks: int = 0  # draws from the buffer in this pass
    rows: int = 0  # rows read from the source in this pass
    carry: list[int] = field(default_factory=list)  # packing: tokens read, not yet in a block
    consumed: int = 0  # examples (or blocks) handed to training

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # a deep copy

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> StreamState:
        return cls(**copy.deepcopy(dict(state)))


@dataclass(frozen=True)
class StreamFormat:
    """How one rank's stream is read and batched: ``buffer_size`` rows shuffled (0: in order),
    ``batch_size`` examples (or blocks of ``block_size`` tokens) per micro-batch, made by
    ``encode`` and ``collate``."""

    source: Source
    encode: Encode
    collate: Callable[[list[dict[str, Any]]], Batch]
    batch_size: int
    buffer_size: int
    block_size: int | None = None  # None: one example per row, padded by collate


class StreamReader:
    """One rank's micro-batches, read on from a :class:`StreamState`."""

    def __init__(self, form: StreamFormat, *, seed: int, rank: int, world_size: int, state: StreamState) -> None:
        self.form, self.seed, self.rank, self.world_size = form, seed, rank, world_size
        self.state = state
        self._opened: Opened | None = None
        self._rows: Iterator[Mapping[str, Any]] | None = None

    def snapshot(self) -> StreamState:
        """The state now, the source's position included (plain data, a copy)."""
        state = StreamState.from_dict(self.state.to_dict())
        if self._opened is not None:
            state.source = self._opened.state_dict()
        return state

    def copy(self) -> StreamReader:
        """A reader at the same position whose reading does not move this one."""
        return StreamReader(self.form, seed=self.seed, rank=self.rank, world_size=self.world_size,
                            state=self.snapshot())

    def next_batch(self) -> Batch:
        """The next micro-batch."""
        form = self.form
        if form.block_size is None:
            numbered = [self._next_row() for _ in range(form.batch_size)]
            batch = form.collate(self._encode(numbered))
        else:
            needed = form.batch_size * form.block_size
            while len(self.state.carry) < needed:
                for example in self._encode([self._next_row()]):
                    self.state.carry.extend(example["input_ids"])
            tokens = torch.tensor(self.state.carry[:needed], dtype=torch.long).view(form.batch_size, form.block_size)
            del self.state.carry[:needed]
            batch = form.collate([{"input_ids": row, LABELS: row} for row in tokens])
        self.state.consumed += form.batch_size
        return batch

    def _encode(self, numbered: list[tuple[int, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        try:
            return self.form.encode([row for _, row in numbered])
        except RowError as error:
            number = numbered[error.position][0]
            raise DataError("train", [number], f"{error.why} (row {number} of pass {self.state.pass_index} of rank "
                            f"{self.rank}'s stream)") from error  # the cause keeps the key of the column at fault

    def _next_row(self) -> tuple[int, Mapping[str, Any]]:
        """The next row (numbered in its pass) through the shuffle buffer; a new pass when this one ends."""
        state, size = self.state, self.form.buffer_size
        while True:
            if not state.exhausted:
                try:
                    row = next(self._source_rows(), None)
                except Exception as error:  # a file that does not parse: named, not a traceback
                    raise DataError("train", [state.rows], f"reading row {state.rows} of pass {state.pass_index} "
                                    f"failed: {type(error).__name__}: {one_line(error)}") from None
                if row is None:
                    state.exhausted = True
                    continue
                numbered = [state.rows, dict(row)]
                state.rows += 1
                if size == 0:
                    return numbered[0], numbered[1]
                if len(state.buffer) < size:  # filling
                    state.buffer.append(numbered)
                    continue
                j = self._draw(len(state.buffer))
                out, state.buffer[j] = state.buffer[j], numbered
                return out[0], out[1]
            if state.buffer:  # the pass is read: drain the buffer in a drawn order
                out = state.buffer.pop(self._draw(len(state.buffer)))
                return out[0], out[1]
            self._next_pass()

    def _draw(self, n: int) -> int:
        index = draw(self.seed, self.rank, self.state.pass_index, self.state.picks, n)
        self.state.picks += 1
        return index

    def _source_rows(self) -> Iterator[Mapping[str, Any]]:
        if self._rows is None:
            shuffle_seed = self.seed if self.form.buffer_size > 0 else None
            self._opened = self.form.source.open(self.state.pass_index, rank=self.rank, world_size=self.world_size,
                                                 shuffle_seed=shuffle_seed, state=self.state.source)
            self._rows = iter(self._opened)
        return self._rows

    def _next_pass(self) -> None:
        if self.state.rows == 0:
            raise DataError("train", [0], f"rank {self.rank} of {self.world_size}'s share of the training stream holds "
                            "no rows: give more data, or fewer ranks")
        state = self.state  # in place: the packing carry and the count go on
        state.pass_index, state.source, state.exhausted, state.picks, state.rows = state.pass_index + 1, None, False, 0, 0
        self._opened, self._rows = None, None


class Stream:
    """A run's training stream on this rank: its reader, made at the first read (when the rank,
    the seed and the batch size are known), from the state a checkpoint restored or the start."""

    def __init__(self, make_format: Callable[[int], StreamFormat]) -> None:
        self.make_format = make_format  # batch_size -> how to read
        self.restored: StreamState | None = None
        self.reader: StreamReader | None = None

    def reader_for(self, *, seed: int, batch_size: int, rank: int, world_size: int) -> StreamReader:
        if self.reader is None:
            self.reader = StreamReader(self.make_format(batch_size), seed=seed, rank=rank, world_size=world_size,
                                       state=self.restored or StreamState())
        return self.reader

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (the start before it has read anything)."""
        if self.reader is not None:
            return self.reader.snapshot().to_dict()
        return (self.restored or StreamState()).to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Read on from ``state`` (what :meth:`state_dict` gave) at the first read."""
        self.restored, self.reader = StreamState.from_dict(state), None


@dataclass(frozen=True)
class StreamEpoch:
    """One epoch of a stream: ``len`` micro-batches over all ranks, read on from where it is."""

    stream: Stream
    batch_size: int
    seed: int
    epoch: int
    num_batches: int

    def __len__(self) -> int:
        return self.num_batches

    def batches(self, start: int, count: int, device: torch.device, *, rank: int, world_size: int) -> Iterator[Batch]:
        """This rank's micro-batches ``start .. start + count - 1`` of the epoch (its last ``count``),
        on ``device``. A stream cannot go back: asked again for batches it has handed out (the
        BatchNorm pass of a schedule-free optimizer re-reads an epoch's first ones), it gives the
        next ones, read from a copy, so its position does not move and a resumed run reads the same."""
        reader = self.stream.reader_for(seed=self.seed, batch_size=self.batch_size, rank=rank, world_size=world_size)
        # Examples this rank read before the first one asked: counted in examples, not micro-batches,
        # so a resume that splits the same global batch into other micro-batches reads on exactly.
        at = (self.epoch * (start + count) + start) * self.batch_size
        if at < reader.state.consumed:
            reader = reader.copy()
        elif at > reader.state.consumed:
            raise RuntimeError(f"the stream has handed out {reader.state.consumed} examples, asked for example "
                               f"{at}: its checkpointed position was not restored")
        for _ in range(count):
            yield to_device(reader.next_batch(), device, non_blocking=True)
