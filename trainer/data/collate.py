"""Examples into batches: ``data.collate``, and packing token sequences into blocks.

``data.collate`` (map-style data) names a callable that makes one batch of a list of examples;
null (the default) is :func:`collate_items`: ``(input, target)`` pairs stacked as torch's
``default_collate`` stacks them, and mappings of named sequences padded by :class:`Pad` to the
longest of the batch. :class:`Packed` is the other way to batch text, for pre-training: every
document's tokens end to end, cut into blocks of ``block_size`` that need no padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate

from trainer.data.named import IGNORE_INDEX, LABELS, Batch

#: What the padding of each named sequence holds, besides ``input_ids`` (the pad id): nothing to
#: attend to, nothing to score. Other sequences (``token_type_ids``) are padded with 0.
PAD_VALUES = {"attention_mask": 0, LABELS: IGNORE_INDEX}


@dataclass(frozen=True)
class Pad:
    """Named examples (mappings of int sequences, or of scalars such as a class label) into one
    batch, each sequence padded on the right to the batch's longest: ``input_ids`` with ``pad_id``
    (a tokenizer's ``pad_token_id``), ``attention_mask`` with 0, ``labels`` with -100 (not scored).

    An example without ``attention_mask`` gets one of ones over its tokens; one without ``labels``
    gets its ``input_ids`` (a causal language model's targets, as Hugging Face's
    ``DataCollatorForLanguageModeling(mlm=False)`` makes them). Every example has the same keys.
    """

    pad_id: int = 0

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self._complete(item) for item in items]
        keys = list(rows[0])
        if any(list(row) != keys for row in rows):
            raise ValueError(f"examples with different keys: {keys} and {next(list(r) for r in rows if list(r) != keys)}")
        batch = {}
        for key in keys:
            values = [row[key] for row in rows]
            if values[0].dim() == 0:
                batch[key] = torch.stack(values)
                continue
            longest = max(len(v) for v in values)
            fill = self.pad_id if key == "input_ids" else PAD_VALUES.get(key, 0)
            batch[key] = torch.stack([torch.cat([v, v.new_full((longest - len(v),), fill)]) for v in values])
        return batch

    @staticmethod
    def _complete(item: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        row = {str(k): torch.as_tensor(v) for k, v in item.items()}
        if "input_ids" in row:
            row.setdefault("attention_mask", torch.ones_like(row["input_ids"]))
            row.setdefault(LABELS, row["input_ids"].clone())
        return row


def collate_items(items: Sequence[Any]) -> Batch:
    """``data.collate: null``: pairs stacked (torch's ``default_collate``), mappings padded (:class:`Pad`)."""
    if isinstance(items[0], Mapping):
        return Pad()(items)
    return default_collate(items)


class Packed(TorchDataset):
    """A dataset of documents (mappings with ``input_ids``, or token sequences) as blocks of
    ``block_size`` tokens: every document's tokens end to end, in order, cut into whole blocks
    (the rest, under one block, is dropped), each ``{input_ids, labels}`` with the labels its own
    tokens (a causal language model shifts them itself), as Hugging Face's ``run_clm.py``
    ``group_texts`` packs. No padding, so every position is scored; end each document with the
    tokenizer's end-of-text token if the model should see where one stops.

    The tokens are read once, when it is made, and held in memory as int64.
    """

    def __init__(self, dataset: TorchDataset, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"need block_size >= 1, got {block_size}")
        documents = (dataset[i] for i in range(len(dataset)))
        pieces = [torch.as_tensor(d["input_ids"] if isinstance(d, Mapping) else d, dtype=torch.long).flatten()
                  for d in documents]
        tokens = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
        self.block_size = block_size
        self.blocks = tokens[: len(tokens) // block_size * block_size].view(-1, block_size)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, LABELS: block}
