"""Every file a run writes is written whole or not at all, and a summary that cannot be read is a
failed run to whoever reads it, not a crash."""

from __future__ import annotations

import errno
import os

import pytest

from trainer.compare import read_job
from trainer.files import write_atomic
from trainer.rundir.summary import read_summary, write_summary


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_atomic(path, "old\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        write_summary(tmp_path, "completed", metrics={"val/loss": 0.5})
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("content", ["", "{\"status\": ", "[1, 2]"])
def test_a_summary_cut_short_or_foreign_reads_as_a_failed_run(tmp_path, content):
    (tmp_path / "metrics.json").write_text(content)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["error"].startswith("metrics.json unreadable")
    job = read_job(tmp_path)  # what a sweep's report reads: no traceback
    assert job.status == "failed" and job.error.startswith("metrics.json unreadable")
