"""Logging every update without a host-device sync per update: values are read in batches."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from trainer.app.run import train
from trainer.rundir.events import read_scalars
from trainer.rundir.logger import RunLogger

TAGS = ("train/lr", "train/loss", "train/grad_norm", "train/epoch", "train/skipped_updates")


@pytest.fixture
def reads(monkeypatch):
    """The number of updates each read of pending device values covered, in order."""
    sizes = []
    original = RunLogger.read

    def counting(self, *args):
        if self._pending:
            sizes.append(len(self._pending))
        return original(self, *args)

    monkeypatch.setattr(RunLogger, "read", counting)
    return sizes


def test_values_are_read_in_batches_and_logged_exactly_as_when_read_each_update(tmp_path, reads):
    # 2 epochs of 8 updates, every update logged
    overrides = ["schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=2"]
    train(compose_config(*overrides, "logger.read_every_n_steps=1"), tmp_path / "each")
    assert reads == [1] * 16
    reads.clear()
    train(compose_config(*overrides, "logger.read_every_n_steps=5"), tmp_path / "batched")
    # due after updates 4, 9, 14 and the last (15); the epoch end (after update 7) reads before
    # validating and checkpointing
    assert reads == [5, 3, 2, 5, 1]
    each, batched = read_scalars(tmp_path / "each"), read_scalars(tmp_path / "batched")
    for tag in TAGS:
        assert [s for s, _ in batched[tag]] == list(range(16)), tag
        assert batched[tag] == each[tag], tag


def test_a_stop_policy_reads_every_logged_update(tmp_path, reads):
    train(compose_config("schedule=cosine", "trainer.max_epochs=1", "trainer.nonfinite=stop",
                         "logger.read_every_n_steps=50", "logger.log_every_n_steps=2"), tmp_path)
    assert reads == [1] * 4 + [1]  # updates 0, 2, 4, 6 and the last, 7


def progress_logger(tmp_path, clock):
    """A RunLogger for 2 epochs of 10 updates with its bar on, timed by ``clock`` (a fake: [seconds])."""
    logger = RunLogger(tmp_path, log_every_n_steps=1, read_every_n_steps=1, max_updates=20, epoch_of=lambda update: update // 10,
                       group_names=["decay"], progress_bar=True)
    logger.bar._time = lambda: clock[0]
    logger.bar.start_t = logger.bar.last_print_t = clock[0]
    return logger


def test_the_bar_shows_the_epoch_and_its_rate_leaves_out_validation(tmp_path):
    clock = [1000.0]
    logger = progress_logger(tmp_path, clock)
    assert logger.bar.desc.startswith("epoch 1/2")
    for _ in range(10):  # one update a second
        clock[0] += 1.0
        logger.advance()
    assert logger.bar.desc.startswith("epoch 2/2")
    clock[0] += 100.0  # a validation that takes 100 s
    logger.log_val(10, {"val/loss": 1.0})
    clock[0] += 1.0
    logger.advance()
    timing = logger.bar.format_dict
    assert timing["elapsed"] == pytest.approx(11.0)  # the updates' time, not the validation's
    assert timing["rate"] == pytest.approx(1.0)  # so the ETA of the 9 updates left stays 9 s
    logger.close()
