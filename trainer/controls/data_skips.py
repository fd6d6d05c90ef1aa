"""``data.on_error=skip``: the examples a map-style dataset left out, as ``data/skipped``.

The dataset collects them in the training process as it takes each micro-batch from its workers
(:meth:`~trainer.data.map_style.MapDataset.usable`), each distinct example once however often it
is read (every epoch, every validation), and fails the run past ``data.max_skipped`` of them; this
control logs their running count with each logged update, adds it to the final metrics and keeps
them in the checkpoint, so a resumed run goes on counting where the stopped one was. Under
several ranks each counts what it read itself: the log and the cap are per rank.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from trainer.controls import Control, Parts
from trainer.data.map_style import MapDataset

#: Its keys are the data's (``data.on_error``, ``data.max_skipped``: :data:`trainer.data.map_style.PARAMS`).
KEYS: dict[str, Any] = {}


def build(cfg: DictConfig, parts: Parts) -> DataSkips | None:
    dataset = parts.dataset
    return DataSkips(dataset, parts.device) if isinstance(dataset, MapDataset) and dataset.skip else None


class DataSkips(Control):
    """Shows the dataset's count of skipped examples as a device counter (``data/skipped``)."""

    name = "data_skips"

    def __init__(self, dataset: MapDataset, device: torch.device) -> None:
        self.dataset = dataset
        self._count = torch.zeros((), dtype=torch.long, device=device)
        self._shown = 0

    def counters(self) -> dict[str, torch.Tensor]:
        # fill_ from a host number launches a kernel without a sync, and only when the count moved.
        if len(self.dataset.skipped) != self._shown:
            self._shown = len(self.dataset.skipped)
            self._count.fill_(self._shown)
        return {"data/skipped": self._count}

    def final_metrics(self) -> dict[str, float]:
        return {"data/skipped": len(self.dataset.skipped)}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": sorted(self.dataset.skipped)}  # [(split, index)]: a checkpoint loads without pickle

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.dataset.skipped = {(str(split), int(index)) for split, index in state["skipped"]} if state else set()
