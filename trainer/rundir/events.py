"""TensorBoard event files: a lean writer for the training loop, and a reader for reports and tests.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import struct
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary

try:  # C: 0.1 µs per record, where TensorBoard's pure-Python CRC takes about 20 µs (a logged update needs two)
    from google_crc32c import value as crc32c
except ImportError:  # installed without its dependencies (e.g. PYTHONPATH on a bare image)
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c


_file_numbers = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C of ``data``, rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventWriter:
    """Appends event records to one ``events.out.tfevents.*`` file, in the calling thread.

    ``SummaryWriter`` hands every scalar to a writer thread that fights the training thread for
    the GIL (each torch call releases it) and writes one record per scalar; measured on 2 CPU
    cores that halved a small model's updates/s when logging every update. Here all the scalars of
    one step go into a single record, written through a buffer that :meth:`flush` empties.
    """

    def __init__(self, log_dir: Path, *, purge_step: int | None = None, suffix: str = "") -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a directory's files in name order, and a resumed run's purge only works
        # if its file comes after the one it purges: fixed-width numbers keep file 10 of a process
        # after file 9 (and pid 100000 after 99999) within the same second.
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid():07d}"
                f".{next(_file_numbers):06d}{suffix}")
        self.path = log_dir / name
        self._file = open(self.path, "ab", buffering=1 << 16)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            # TensorBoard drops earlier points at steps >= purge_step: a resumed run's replayed updates.
            self._write(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Every ``tag: value`` at ``step``, as one record."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def summary(self, summary: Summary, step: int = 0) -> None:
        """A prepared summary (e.g. the HParams plugin's)."""
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Write the buffered records through to the disk (flush, then fsync): what was logged
        before a checkpoint survives a kill -9 after it."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in ``run_dir``'s event files -> [(step, value), ...] in step order.

    ``size_guidance`` 0 keeps every point (TensorBoard's UI samples them down; we must not).
    """
    # Only here, not in the writer's every run: the reader imports TensorBoard's file systems
    # (fsspec, boto3 where installed), most of a second.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # TensorBoard's reader logs a line per event file at INFO, which Hydra's logging (a sweep's
    # report, read in Hydra's process) prints: "[HYDRA] No path found after ...tfevents...".
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
