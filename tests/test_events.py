"""The event writer's checksums are TFRecord's, and TensorBoard's own reader accepts its files."""

from __future__ import annotations

import itertools
import os

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c

from trainer.rundir import events
from trainer.rundir.events import EventWriter, crc32c, masked_crc32c, read_scalars


def test_crc32c_check_value_and_tensorboards_mask():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C (Castagnoli) check value
    for data in (b"", b"\x00" * 8, os.urandom(7), os.urandom(200)):
        assert masked_crc32c(data) == tensorboard_masked_crc32c(data)


def test_tensorboard_reads_back_what_was_written(tmp_path):
    writer = EventWriter(tmp_path)
    for step in range(3):
        writer.scalars(step, {"a": step / 2, "b": -step})
    writer.close()
    assert read_scalars(tmp_path) == {"a": [(0, 0.0), (1, 0.5), (2, 1.0)], "b": [(0, 0.0), (1, -1.0), (2, -2.0)]}


def test_a_resumed_writer_purges_across_the_tenth_file_of_a_process(tmp_path, monkeypatch):
    """A run resumed in the same process and second (as the resume tests do) opens file 10 after
    file 9; TensorBoard reads files in name order, so the purge only works if 10 sorts after 9."""
    monkeypatch.setattr(events, "_file_numbers", itertools.count(9))
    first = EventWriter(tmp_path)
    for step in range(6):
        first.scalars(step, {"a": float(step)})
    first.close()
    resumed = EventWriter(tmp_path, purge_step=3)  # continues from update 3: drops 3..5 of the first file
    for step in range(3, 6):
        resumed.scalars(step, {"a": 10.0 * step})
    resumed.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name, resumed.path.name]
    assert read_scalars(tmp_path) == {"a": [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]}
