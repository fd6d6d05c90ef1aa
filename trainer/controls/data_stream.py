"""A streamed training split's position (``data=hf_dataset data.streaming=true``) in the checkpoint.

A stream is resumed by its state, not by a batch index (:mod:`trainer.data.stream`): this control
keeps every rank's :class:`~trainer.data.stream.StreamState` in the checkpoint (gathered to rank
0, which writes it) and gives each rank its own back on resume, so the resumed run reads on from
the very next example. Each rank reads its own share of the files (``split_dataset_by_node``),
so the position of one world size means nothing at another: resuming with another number of
ranks is refused.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from trainer.controls import Control, Parts
from trainer.data.stream import Stream
from trainer.distributed import World
from trainer.errors import ConfigError

#: Its keys are the data's (``data.streaming``: :data:`trainer.data.hf_dataset.PARAMS`).
KEYS: dict[str, Any] = {}


def build(cfg: DictConfig, parts: Parts) -> DataStream | None:
    stream = getattr(parts.dataset, "stream", None)
    return DataStream(stream, parts.world) if isinstance(stream, Stream) else None


class DataStream(Control):
    """Saves and restores each rank's stream position."""

    name = "data_stream"

    def __init__(self, stream: Stream, world: World) -> None:
        self.stream, self.world = stream, world

    def state_dict(self) -> dict[str, Any]:
        # A collective: every rank saves a checkpoint together (rank 0 writes it).
        return {"world_size": self.world.world_size, "ranks": self.world.gather(self.stream.state_dict())}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            raise ConfigError("trainer.resume", "the checkpoint holds no stream position (its run did not stream "
                                                "its data): start a new run")
        if state["world_size"] != self.world.world_size:
            raise ConfigError("trainer.resume", f"the checkpoint's stream was read by {state['world_size']} ranks, "
                              f"each its own share of the files; resume with {state['world_size']}, not "
                              f"{self.world.world_size} (a stream's position cannot be split anew)")
        self.stream.load_state_dict(state["ranks"][self.world.rank])
