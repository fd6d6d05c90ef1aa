"""A user's text data and losses for Hugging Face models: datasets of dicts (a tokenizer's output,
of varied lengths) and losses that read ``outputs.logits``."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset


class Sentences(Dataset):
    """``size`` token sequences of ``min_len``..``max_len`` ids below ``vocab_size``, as a tokenizer
    gives them: ``{"input_ids": [...]}`` (lists, no labels: the collator makes them). Each counts
    up by one (mod ``vocab_size``) from a random start, so a language model has something to learn.
    With ``num_classes``, each is a classification example instead: ``labels`` = its first id mod
    ``num_classes``."""

    def __init__(self, size: int, *, min_len: int = 2, max_len: int = 24, vocab_size: int = 32, seed: int = 0,
                 num_classes: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_len, max_len + 1, (size,), generator=generator)
        starts = torch.randint(0, vocab_size, (size,), generator=generator)
        self.items = [((start + torch.arange(int(n))) % vocab_size).tolist() for start, n in zip(starts, lengths)]
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        item = {"input_ids": self.items[k]}
        if self.num_classes is not None:
            item["labels"] = self.items[k][0] % self.num_classes
        return item


def logits_loss(outputs, targets: torch.Tensor) -> torch.Tensor:
    """A user's causal-LM loss on ``outputs.logits`` (a ``ModelOutput``): the mean cross-entropy of
    this batch's tokens, labels shifted as Hugging Face's are (README: ``loss._target_``)."""
    logits = outputs.logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100)


def smoothness_loss(outputs, targets: torch.Tensor) -> torch.Tensor:
    """``logits_loss`` plus a penalty on its gradient with respect to the logits (a regulariser of the
    kind that calls ``torch.autograd.grad``): fine in training, impossible without autograd, as
    validation runs."""
    loss = logits_loss(outputs, targets)
    (slope,) = torch.autograd.grad(loss, outputs.logits, create_graph=True)
    return loss + slope.square().sum()


class Instructions(Dataset):
    """``size`` instruction examples for supervised fine-tuning: a prompt of 3..8 ids below
    ``vocab_size - 1``, the separator ``vocab_size - 1``, and the response (the prompt reversed).
    ``labels`` are -100 over the prompt and the separator: only the response is scored."""

    def __init__(self, size: int, *, vocab_size: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 9, (size,), generator=generator)
        self.prompts = [torch.randint(0, vocab_size - 1, (int(n),), generator=generator).tolist() for n in lengths]
        self.separator = vocab_size - 1

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, k: int) -> dict:
        prompt = self.prompts[k]
        response = prompt[::-1]
        return {"input_ids": [*prompt, self.separator, *response], "labels": [-100] * (len(prompt) + 1) + response}
