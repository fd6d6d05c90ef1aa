"""``data=hf_dataset``: Hugging Face ``datasets`` from local files, tokenized by a local tokenizer.

The rows come from ``data.files`` (split name -> a file or glob, read by ``datasets.load_dataset``
in ``data.format``) or ``data.from_disk`` (a folder ``save_to_disk`` wrote); nothing is ever
fetched (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``, ``local_files_only``). ``data.text_column``
is tokenized by ``data.tokenizer`` (a folder ``save_pretrained`` wrote, read by ``AutoTokenizer``,
or a ``tokenizers`` ``tokenizer.json``), which the run directory keeps as ``tokenizer/``.

Two ways to batch: padded per micro-batch (:class:`~trainer.data.collate.Pad`; fine-tuning, and
a classifier's ``labels`` from ``data.label_column``), or packed into blocks of
``data.block_size`` tokens (pre-training; every document ends with the tokenizer's end-of-text
token). Two ways to read the training split:

- map-style (the default): the rows are ``datasets``' Arrow table (memory-mapped; ``load_dataset``
  converts the files once, into ``data.cache_dir``) and each example is tokenized when a
  DataLoader worker reads it: no tokenized copy is written anywhere, and the order is our
  sampler's, a pure function of (seed, epoch), so a run resumes exactly at any world size. Packed,
  every document is tokenized once when the run starts and the blocks are held in memory.
- ``data.streaming=true``: an ``IterableDataset`` on the files, read in the training process and
  resumed from its state in the checkpoint (:mod:`trainer.data.stream`); an epoch is
  ``data.stream_examples`` examples (or blocks). Validation is always map-style.

``datasets`` and ``transformers`` are imported only when such data is built.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset as TorchDataset

from trainer.data.batches import batches_per_epoch, epoch_order
from trainer.data.collate import Packed, Pad
from trainer.data.map_style import PARAMS as MAP_PARAMS
from trainer.data.map_style import MapDataset, map_dataset, worker_count
from trainer.data.named import LABELS, Batch
from trainer.data.stream import RowError, Stream, StreamEpoch, StreamFormat, StreamReader, StreamState
from trainer.errors import ConfigError, DataError, one_line, require
from trainer.files import write_atomic
from trainer.params import Param, declare

#: data.format -> the ``datasets`` builder; the extensions it is inferred from when null.
FORMATS = {"json": (".json", ".jsonl", ".json.gz", ".jsonl.gz"), "csv": (".csv",), "text": (".txt",),
           "parquet": (".parquet",), "arrow": (".arrow",)}

PARAMS = {
    "files": Param(None, "split name -> a local file or glob, e.g. {train: data/train.jsonl, validation: "
                   "data/val.jsonl} (or data.from_disk)", dict, item=str, extra=(None,)),
    "format": Param(None, "the files' format: json (also JSON Lines), csv, text (one row per line), parquet or "
                    "arrow; null: from their extension", str, choices=tuple(FORMATS), extra=(None,)),
    "from_disk": Param(None, "a folder datasets' save_to_disk wrote (a Dataset, or a DatasetDict of splits), instead "
                       "of data.files", str, extra=(None,)),
    "train_split": Param("train", "the split to train on", str),
    "val_split": Param("validation", "the split to validate on; null: none (or data.val_fraction)", str,
                       extra=(None,)),
    "val_fraction": Param(None, "validate on this fraction of the training split's rows instead (the same rows "
                          "whatever the seed), when the data has no validation split", float, low=0, high=1,
                          low_open=True, high_open=True, extra=(None,)),
    "text_column": Param("text", "the column of text to tokenize", str),
    "label_column": Param(None, "a classifier's labels: integers, a ClassLabel or strings (classes in sorted "
                          "order); null: a language model's (its own tokens)", str, extra=(None,)),
    "num_classes": Param(None, "classes when the labels are integers without names", int, low=1, extra=(None,)),
    "tokenizer": Param(None, "a folder save_pretrained wrote (AutoTokenizer, local files only) or a tokenizers "
                       "tokenizer.json (required)", str, extra=(None,)),
    "special_tokens": Param(None, "special tokens the tokenizer does not name, e.g. {pad_token: '[PAD]', eos_token: "
                            "'<eos>'}", dict, item=str, extra=(None,)),
    "max_length": Param(None, "cut each example to this many tokens; null: keep them whole", int, low=1,
                        extra=(None,)),
    "append_eos": Param(None, "end every example with the tokenizer's eos token; null: when packing", bool,
                        extra=(None,)),
    "block_size": Param(None, "pack every example's tokens end to end into blocks of this many (pre-training); "
                        "null: one example per row, padded per micro-batch", int, low=1, extra=(None,)),
    "streaming": Param(False, "read the training split as a stream (datasets' IterableDataset), resumed from its "
                       "state in the checkpoint", bool),
    "stream_examples": Param(None, "streaming: examples (or blocks) per epoch over all ranks; null: as many as one "
                             "pass holds, counted before training (a full read)", int, low=1, extra=(None,)),
    "shuffle_buffer": Param(1000, "streaming: rows held to shuffle from (and the files' order shuffled per pass); "
                            "0: read in order", int, low=0),
    "cache_dir": Param(None, "where datasets keeps the Arrow copy of map-style files; null: its default "
                       "(HF_DATASETS_CACHE, ~/.cache/huggingface/datasets)", str, extra=(None,)),
    "on_error": MAP_PARAMS["on_error"],
    "max_skipped": MAP_PARAMS["max_skipped"],
}


def _datasets() -> Any:
    """``datasets``, offline and quiet: local files only, no progress bars on the console."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Our workers each tokenize; a parent that tokenized in parallel before forking them would warn.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    datasets.config.HF_HUB_OFFLINE = True  # when datasets was imported before the variables were set
    datasets.disable_progress_bars()
    return datasets


# --------------------------------------------------------------------------------------- the tokenizer


def load_tokenizer(path: str | None, special_tokens: Mapping[str, str] | None) -> Any:
    """A ``transformers`` tokenizer from a local folder (``AutoTokenizer``) or a ``tokenizer.json``."""
    require(path is not None, "data.tokenizer", "missing: give a folder save_pretrained wrote or a tokenizer.json")
    source = Path(path).expanduser()
    require(source.exists(), "data.tokenizer", f"{source} does not exist: give a folder save_pretrained wrote or a "
                                               "tokenizer.json (nothing is downloaded)")
    _datasets()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if source.is_dir():
            return AutoTokenizer.from_pretrained(source, local_files_only=True, **(special_tokens or {}))
        return PreTrainedTokenizerFast(tokenizer_file=str(source), **(special_tokens or {}))
    except Exception as error:  # OSError, ValueError, a JSON error: the file is not a tokenizer
        raise ConfigError("data.tokenizer", f"{source} is not a tokenizer: {one_line(error, 200)}") from None


#: The run directory's folder that keeps the tokenizer (read by ``python -m trainer.sample``).
TOKENIZER_DIR = "tokenizer"


def write_tokenizer(tokenizer: Any, run_dir: Path) -> Path:
    """The tokenizer as ``RUN_DIR/tokenizer/`` (``save_pretrained``'s files: ``tokenizer.json``,
    ``tokenizer_config.json``), each file written atomically, for ``python -m trainer.sample``."""
    folder = run_dir / TOKENIZER_DIR
    folder.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save_pretrained(saved)
        for file in sorted(Path(saved).iterdir()):
            if file.is_file():
                write_atomic(folder / file.name, file.read_bytes())
    return folder


@dataclass(frozen=True)
class Encoder:
    """Rows to examples: ``text_column`` tokenized (cut to ``max_length``, ended by ``eos_id``
    when given and there is room) as ``input_ids``, and ``label_column``'s class index as
    ``labels`` (a name's place in ``label_names``). Raises RowError for a row it cannot use."""

    tokenizer: Any
    text_column: str
    label_column: str | None = None
    label_names: tuple[str, ...] | None = None
    num_classes: int | None = None
    max_length: int | None = None
    eos_id: int | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        texts = []
        for position, row in enumerate(rows):
            text = row.get(self.text_column)
            if not isinstance(text, str):
                raise RowError(position, f"{self.text_column!r} holds a {type(text).__name__}, not a string",
                               "data.text_column")
            texts.append(text)
        ids = self.tokenizer(texts, truncation=self.max_length is not None, max_length=self.max_length,
                             verbose=False)["input_ids"] if texts else []
        examples = []
        for position, (row, tokens) in enumerate(zip(rows, ids)):
            if self.eos_id is not None and (self.max_length is None or len(tokens) < self.max_length):
                tokens = [*tokens, self.eos_id]
            example = {"input_ids": tokens}
            if self.label_column is not None:
                example[LABELS] = self.label(row.get(self.label_column), position)
            examples.append(example)
        return examples

    def label(self, value: Any, position: int) -> int:
        if isinstance(value, str) and self.label_names is not None and value in self.label_names:
            return self.label_names.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (self.num_classes or value + 1):
            return value
        classes = f"one of {', '.join(self.label_names)}" if self.label_names else \
            f"a class index in 0..{self.num_classes - 1}" if self.num_classes else "an integer class index"
        raise RowError(position, f"label {value!r} in {self.label_column!r} is not {classes}", "data.label_column")


class TokenizedSplit(TorchDataset):
    """A ``datasets.Dataset`` split (or the rows ``indices`` of it), each row tokenized when read."""

    def __init__(self, rows: Any, encoder: Encoder, indices: Sequence[int] | None = None) -> None:
        self.rows, self.encoder, self.indices = rows, encoder, indices

    def __len__(self) -> int:
        return len(self.rows) if self.indices is None else len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        number = int(k) if self.indices is None else self.indices[k]
        try:
            return self.encoder([self.rows[number]])[0]
        except RowError as error:  # the reader names the split and the item; we, the row it is
            raise ValueError(error.why if self.indices is None else f"{error.why} (row {number})") from None


# --------------------------------------------------------------------------------------------- the rows


def data_files(files: Mapping[str, str], format: str | None) -> tuple[dict[str, list[str]], str]:
    """Each split's files (globs expanded, sorted, absolute) and their format."""
    found = {}
    for split, pattern in files.items():
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        require(bool(matches), f"data.files.{split}", f"no file matches {pattern!r}")
        found[split] = [os.path.abspath(path) for path in matches]
    if format is None:
        first = next(iter(found.values()))[0]
        format = next((name for name, ends in FORMATS.items() if first.endswith(ends)), None)
        require(format is not None, "data.format", f"cannot tell the format of {first} from its extension: set "
                                                   f"data.format ({' | '.join(FORMATS)})")
    return found, format


def disk_files(folder: Path, splits: Sequence[str]) -> dict[str, list[str]]:
    """The Arrow files of each split of a ``save_to_disk`` folder (a DatasetDict's split folders,
    or one Dataset as ``train``)."""
    if (folder / "dataset_dict.json").is_file():
        return {split: sorted(str(p) for p in (folder / split).glob("*.arrow")) for split in splits
                if (folder / split).is_dir()}
    return {"train": sorted(str(p) for p in folder.glob("*.arrow"))}


def load_rows(files: Mapping[str, str] | None, format: str | None, from_disk: str | None,
              cache_dir: str | None) -> dict[str, Any]:
    """Every split as a ``datasets.Dataset`` (map-style: Arrow, memory-mapped)."""
    datasets = _datasets()
    if from_disk is not None:
        folder = Path(from_disk).expanduser()
        require(folder.is_dir(), "data.from_disk", f"{folder} is not a directory: give a folder save_to_disk wrote")
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as error:
            raise ConfigError("data.from_disk", f"{folder}: {one_line(error, 200)}") from None
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    paths, format = data_files(files, format)
    try:
        return dict(datasets.load_dataset(format, data_files=paths, cache_dir=cache_dir))
    except Exception as error:  # a file that does not parse as its format
        raise ConfigError("data.files", f"datasets cannot read the files as {format}: {one_line(error, 200)}") from None


def pick_splits(splits: Mapping[str, Any], train_split: str, val_split: str | None,
                val_fraction: float | None) -> tuple[Any, Any, list[int] | None, list[int] | None]:
    """The training and validation rows, and which rows of the training split each takes (None: all)."""
    names = ", ".join(splits)
    require(train_split in splits, "data.train_split", f"no split {train_split!r} in the data (it has {names})")
    train = splits[train_split]
    if val_fraction is None:
        if val_split is None:
            return train, None, None, None
        require(val_split in splits, "data.val_split", f"no split {val_split!r} in the data (it has {names}): name "
                "one, set data.val_fraction=0.1 to validate on part of the training rows, or data.val_split=null")
        return train, splits[val_split], None, None
    require(val_split not in splits, "data.val_fraction", f"the data has a {val_split!r} split already: set "
            "data.val_split=null to cut one from the training rows instead, or data.val_fraction=null")
    order = epoch_order(len(train), seed=0, epoch=0)  # the same rows whatever the run's seed
    count = int(len(train) * val_fraction)
    require(0 < count < len(train), "data.val_fraction", f"{val_fraction} of {len(train)} rows is {count}: leave "
                                                         "at least one row on each side")
    return train, train, sorted(order[count:].tolist()), sorted(order[:count].tolist())


def check_columns(rows: Any, split: str, columns: Mapping[str, str | None]) -> None:
    """Each key's column is one of the split's: one line naming the key otherwise."""
    have = list(rows.column_names or [])
    for key, column in columns.items():
        if column is not None and have and column not in have:
            raise ConfigError(f"data.{key}", f"no column {column!r} in the {split} split (it has {', '.join(have)})")


# ------------------------------------------------------------------------------------------ the classes


def label_classes(column: str | None, num_classes: int | None, features: Mapping[str, Any] | None, first_label: Any,
                  values: Any = None) -> tuple[tuple[str, ...] | None, int | None]:
    """The class names (a ClassLabel's, or the sorted strings of the training split) and their
    count. ``values``: () -> (training labels, validation labels), to list string classes (map-style
    data; None for a stream, which cannot list them before reading)."""
    if column is None:
        return None, None
    feature = (features or {}).get(column)
    names = tuple(feature.names) if hasattr(feature, "names") else None
    if names is None and isinstance(first_label, str):
        require(values is not None, "data.label_column", f"{column!r} holds strings, and a stream cannot list its "
                "classes before reading it: give integer labels (or a ClassLabel), or read it map-style "
                "(data.streaming=false)")
        train_labels, val_labels = values()
        names = tuple(sorted({label for label in train_labels if isinstance(label, str)}))
        unknown = sorted({label for label in val_labels if isinstance(label, str)} - set(names))
        require(not unknown, "data.label_column", f"validation label {unknown[:1]} is not among the training split's "
                                                  f"({', '.join(names)})")
    if names is not None:
        require(num_classes in (None, len(names)), "data.num_classes", f"the labels name {len(names)} classes "
                                                                       f"({', '.join(names)}), not {num_classes}")
        return names, len(names)
    require(num_classes is not None, "data.num_classes", f"the labels in {column!r} are integers without names: "
                                                         "say how many classes there are")
    return None, num_classes


def eos_for(tokenizer: Any, append_eos: bool | None, block_size: int | None) -> int | None:
    """The id to end each example with, or None (``data.append_eos``; null: when packing)."""
    eos = tokenizer.eos_token_id
    if append_eos is None:
        return eos if block_size is not None else None
    require(not append_eos or eos is not None, "data.append_eos", "the tokenizer has no eos token: name one "
            "(data.special_tokens={eos_token: ...}) or set data.append_eos=false")
    return eos if append_eos else None


def pad_id_of(tokenizer: Any) -> int:
    """What pads ``input_ids``: the tokenizer's pad token, else its eos token, else 0 (never
    attended to nor scored: the attention mask and the labels say so)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


# ---------------------------------------------------------------------------------------- the datasets


@dataclass
class HFData(MapDataset):
    """A map-style :class:`~trainer.data.map_style.MapDataset` whose run keeps its tokenizer."""

    tokenizer: Any = None

    def write_files(self, run_dir: Path) -> Path:
        """``RUN_DIR/tokenizer/`` (see :func:`write_tokenizer`), once, on rank 0, before training."""
        return write_tokenizer(self.tokenizer, run_dir)


@dataclass
class StreamData(HFData):
    """Streamed training rows (:mod:`trainer.data.stream`) and a map-style validation split; an
    epoch is ``examples_per_epoch`` examples (or blocks) over all ranks."""

    stream: Stream | None = None
    examples_per_epoch: int = 0

    @property
    def num_train(self) -> int:
        return self.examples_per_epoch

    def train_epoch(self, batch_size: int, *, seed: int, epoch: int) -> StreamEpoch:  # type: ignore[override]
        return StreamEpoch(self.stream, batch_size, seed, epoch, batches_per_epoch(self.examples_per_epoch, batch_size))

    def first_batch(self, size: int = 2) -> Batch:
        """The stream's first ``size`` examples (or blocks), in file order, read by a reader of
        their own (the run's stream does not move): a row that cannot be used is a ConfigError."""
        return head_batch(self.stream.make_format(size), size)


def head_batch(form: StreamFormat, size: int, files_key: str = "data.files") -> Batch:
    """The first micro-batch of ``size`` of a stream, unshuffled; a row that cannot be used is a
    ConfigError at the key of its column (or ``files_key``, for a file that does not parse)."""
    reader = StreamReader(StreamFormat(form.source, form.encode, form.collate, size, 0, form.block_size),
                          seed=0, rank=0, world_size=1, state=StreamState())
    try:
        return reader.next_batch()
    except DataError as error:
        key = error.__cause__.key if isinstance(error.__cause__, RowError) else files_key
        raise ConfigError(key, f"the training stream's {error}") from None


@dataclass(frozen=True)
class FileStream:
    """``datasets``' ``IterableDataset`` on local files (:class:`~trainer.data.stream.Source`):
    ``columns`` of them, one rank's share (``split_dataset_by_node``), the files in a shuffled order
    per pass when asked."""

    format: str
    files: tuple[str, ...]
    columns: tuple[str, ...]

    def open(self, pass_index: int, *, rank: int, world_size: int, shuffle_seed: int | None,
             state: dict[str, Any] | None) -> Any:
        datasets = _datasets()
        from datasets.distributed import split_dataset_by_node

        files = list(self.files)
        if shuffle_seed is not None:
            files = [files[i] for i in epoch_order(len(files), seed=shuffle_seed, epoch=pass_index).tolist()]
        rows = datasets.load_dataset(self.format, data_files={"train": files}, split="train", streaming=True)
        if self.columns:  # () while the columns are not yet checked: all of them
            rows = rows.select_columns(list(self.columns))
        if world_size > 1:
            rows = split_dataset_by_node(rows, rank=rank, world_size=world_size)
        if state is not None:
            rows.load_state_dict(state)
        return rows

    def count(self, encoder: Encoder, block_size: int | None) -> int:
        """Examples (rows) in one pass, or whole blocks of ``block_size`` in its tokens."""
        rows = self.open(0, rank=0, world_size=1, shuffle_seed=None, state=None)
        total = 0
        for batch in rows.iter(batch_size=1000):
            count = len(next(iter(batch.values())))
            if block_size is None:
                total += count
            else:
                examples = encoder([{k: v[i] for k, v in batch.items()} for i in range(count)])
                total += sum(len(example["input_ids"]) for example in examples)
        return total if block_size is None else total // block_size


# ------------------------------------------------------------------------------------------ the builder


@declare(**PARAMS)
def hf_dataset(
    *, files: Mapping[str, str] | None, format: str | None, from_disk: str | None, train_split: str,
    val_split: str | None, val_fraction: float | None, text_column: str, label_column: str | None,
    num_classes: int | None, tokenizer: str | None, special_tokens: Mapping[str, str] | None, max_length: int | None,
    append_eos: bool | None, block_size: int | None, streaming: bool, stream_examples: int | None,
    shuffle_buffer: int, cache_dir: str | None, on_error: str, max_skipped: int, num_workers: int | str = "auto",
    pin_memory: bool = False,
) -> HFData:
    """``data=hf_dataset`` (see the module's docstring). ``num_workers`` and ``pin_memory`` are the
    loop's (``data.num_workers``; pinned for a CUDA device)."""
    require((files is None) != (from_disk is None), "data.files",
            "give either data.files (split -> file or glob) or data.from_disk (a save_to_disk folder), not both or neither")
    require(block_size is None or label_column is None, "data.block_size", "packing joins examples, and a "
            "classifier's labels (data.label_column) need one example per row: set data.block_size=null")
    settings = Settings(files, format, from_disk, train_split, val_split, val_fraction, text_column, label_column,
                        num_classes, max_length, append_eos, block_size, cache_dir)
    tok = load_tokenizer(tokenizer, special_tokens)
    if streaming:
        require(val_fraction is None, "data.val_fraction", "a stream has no length to take a fraction of: name a "
                "validation split (data.files={train: ..., validation: ...}) or set data.val_split=null")
        require(on_error == "raise", "data.on_error", "a stream's rows are not skipped: fix the row the error "
                                                      "names, or read the data map-style (data.streaming=false)")
        return streamed(settings, tok, stream_examples=stream_examples, shuffle_buffer=shuffle_buffer,
                        num_workers=num_workers, pin_memory=pin_memory, max_skipped=max_skipped)
    splits = load_rows(files, format, from_disk, cache_dir)
    train_rows, val_rows, train_rows_taken, val_rows_taken = pick_splits(splits, train_split, val_split, val_fraction)
    encoder = settings.encoder(tok, train_rows, val_rows, lambda: (train_rows[label_column],
                                                                   val_rows[label_column] if val_rows is not None else []))
    train = settings.examples(TokenizedSplit(train_rows, encoder, train_rows_taken), "train")
    val = None if val_rows is None else settings.examples(TokenizedSplit(val_rows, encoder, val_rows_taken), "val")
    data = map_dataset(train, val, num_classes=encoder.num_classes or len(tok), pin_memory=pin_memory,
                       num_workers=worker_count(num_workers, train), skip=on_error == "skip", max_skipped=max_skipped,
                       collate=Pad(pad_id_of(tok)))
    return HFData(**{f.name: getattr(data, f.name) for f in fields(MapDataset)}, tokenizer=tok)


@dataclass(frozen=True)
class Settings:
    """What both ways of reading share: where the rows are, and how they become examples."""

    files: Mapping[str, str] | None
    format: str | None
    from_disk: str | None
    train_split: str
    val_split: str | None
    val_fraction: float | None
    text_column: str
    label_column: str | None
    num_classes: int | None
    max_length: int | None
    append_eos: bool | None
    block_size: int | None
    cache_dir: str | None

    @property
    def files_key(self) -> str:
        """The key that says where the rows are."""
        return "data.from_disk" if self.from_disk is not None else "data.files"

    def encoder(self, tokenizer: Any, train: Any, val: Any, values: Any) -> Encoder:
        """The :class:`Encoder` of these rows, their columns and classes checked (``values``: see
        :func:`label_classes`)."""
        columns = {"text_column": self.text_column, "label_column": self.label_column}
        check_columns(train, self.train_split, columns)
        if val is not None:
            check_columns(val, self.val_split or self.train_split, columns)
        first = next(iter(train), None) if self.label_column is not None else None
        names, classes = label_classes(self.label_column, self.num_classes, train.features,
                                       (first or {}).get(self.label_column), values)
        return Encoder(tokenizer, self.text_column, self.label_column, names, classes, self.max_length,
                       eos_for(tokenizer, self.append_eos, self.block_size))

    def examples(self, split: TokenizedSplit, name: str) -> TorchDataset:
        """``split`` itself, its item 0 checked (a ConfigError naming the column at fault), or packed."""
        require(len(split) > 0, self.files_key, f"the {name} split holds no rows")
        if self.block_size is None:
            first = split.indices[0] if split.indices else 0
            check_row(split.encoder, [split.rows[first]], name, [first])
            return split
        return packed(split, self.block_size, name)


def check_row(encoder: Encoder, rows: list[Mapping[str, Any]], split: str, numbers: Sequence[int]) -> list[dict]:
    """``encoder(rows)``; a row it cannot use is a ConfigError naming its column, split and row
    (``numbers``: each row's in its split)."""
    try:
        return encoder(rows)
    except RowError as error:
        raise ConfigError(error.key, f"{split} row {numbers[error.position]}: {error.why}") from None


def packed(split: TokenizedSplit, block_size: int, name: str) -> Packed:
    """Every row of ``split`` tokenized (a thousand at a time) and packed into blocks."""
    taken = range(len(split.rows)) if split.indices is None else split.indices
    documents = []
    for start in range(0, len(taken), 1000):
        chunk = [int(k) for k in taken[start : start + 1000]]
        columns = split.rows[chunk]
        rows = [{key: values[i] for key, values in columns.items()} for i in range(len(chunk))]
        documents += [example["input_ids"] for example in check_row(split.encoder, rows, name, chunk)]
    blocks = Packed(documents, block_size)
    require(len(blocks) > 0, "data.block_size", f"the {name} split's {sum(map(len, documents))} tokens make no "
                                                f"block of {block_size}")
    return blocks


def streamed(settings: Settings, tok: Any, *, stream_examples: int | None, shuffle_buffer: int,
             num_workers: int | str, pin_memory: bool, max_skipped: int) -> StreamData:
    """``data.streaming=true``: the training split as a :class:`FileStream`, validation map-style."""
    s = settings
    paths, form = stream_files(s)
    require(s.train_split in paths, "data.train_split", f"no split {s.train_split!r} in the data (it has "
                                                        f"{', '.join(paths)})")
    val_rows = None
    if s.val_split is not None:
        require(s.val_split in paths, "data.val_split", f"no split {s.val_split!r} in the data (it has "
                f"{', '.join(paths)}): name one, or set data.val_split=null")
        val_rows = stream_val_rows(s, form, paths)
    head, first = first_row(FileStream(form, tuple(paths[s.train_split]), ()), s)
    columns = [c for c in (s.text_column, s.label_column) if c is not None]
    for key, column in (("text_column", s.text_column), ("label_column", s.label_column)):
        require(column is None or column in first, f"data.{key}", f"no column {column!r} in the {s.train_split} "
                                                                   f"split (it has {', '.join(first)})")
    names, classes = label_classes(s.label_column, s.num_classes, head.features, first.get(s.label_column or ""))
    encoder = Encoder(tok, s.text_column, s.label_column, names, classes, s.max_length,
                      eos_for(tok, s.append_eos, s.block_size))
    source = FileStream(form, tuple(paths[s.train_split]), tuple(columns))
    pad = Pad(pad_id_of(tok))

    def make_format(batch_size: int) -> StreamFormat:
        return StreamFormat(source, encoder, pad, batch_size, shuffle_buffer, s.block_size)

    examples = stream_examples if stream_examples is not None else count_pass(source, encoder, s)
    val = None if val_rows is None else s.examples(TokenizedSplit(val_rows, encoder), "val")
    head_inputs = head_batch(make_format(1), 1, s.files_key)["input_ids"]
    return StreamData(None, val, encoder.num_classes or len(tok), tuple(head_inputs.shape[1:]),
                      worker_count(num_workers, val), pin_memory, False, max_skipped, pad, tokenizer=tok,
                      stream=Stream(make_format), examples_per_epoch=examples)


def stream_files(s: Settings) -> tuple[dict[str, list[str]], str]:
    """Each split's files and their format, for a stream: ``data.files``, or a save_to_disk folder's Arrow files."""
    if s.files is not None:
        return data_files(s.files, s.format)
    folder = Path(s.from_disk).expanduser()
    require(folder.is_dir(), "data.from_disk", f"{folder} is not a directory: give a folder save_to_disk wrote")
    found = {split: files for split, files in disk_files(folder, [s.train_split, s.val_split or ""]).items() if files}
    require(bool(found), "data.from_disk", f"{folder} holds no Arrow files: give a folder save_to_disk wrote")
    return found, "arrow"


def stream_val_rows(s: Settings, form: str, paths: Mapping[str, list[str]]) -> Any:
    """A stream's validation split, map-style (Arrow, memory-mapped): every validation reads it whole."""
    if s.from_disk is not None:
        return load_rows(None, None, str(Path(s.from_disk).expanduser() / s.val_split), None)["train"]
    return load_rows({s.val_split: s.files[s.val_split]}, form, None, s.cache_dir)[s.val_split]


def first_row(whole: FileStream, s: Settings) -> tuple[Any, Mapping[str, Any]]:
    """The training stream (every column) and its first row, which must be there and parse."""
    head = whole.open(0, rank=0, world_size=1, shuffle_seed=None, state=None)
    try:
        first = next(iter(head), None)
    except Exception as error:  # a file that does not parse as its format
        raise ConfigError(s.files_key, f"datasets cannot read the {s.train_split} split: {one_line(error, 200)}") \
            from None
    require(first is not None, s.files_key, f"the {s.train_split} split holds no rows")
    return head, first


def count_pass(source: FileStream, encoder: Encoder, s: Settings) -> int:
    """``data.stream_examples=null``: the examples (or blocks) of one pass, counted by reading it."""
    try:
        count = source.count(encoder, s.block_size)
    except RowError as error:
        raise ConfigError(error.key, f"counting the stream's examples: {error.why}") from None
    except Exception as error:  # a row further on that does not parse
        raise ConfigError(s.files_key, f"counting the stream's examples: {one_line(error, 200)}") from None
    require(count > 0, "data.block_size" if s.block_size else s.files_key, "one pass of the training stream holds "
                                                                           "no whole example")
    return count
