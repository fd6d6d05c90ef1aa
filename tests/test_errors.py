"""One table from how a run ended to its status (metrics.json, sweep reports) and its exit code,
as trainer/errors.py's docstring states it; every door reads it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from trainer.errors import (
    FINISHED,
    OUTCOMES,
    STATUSES,
    ConfigError,
    GradSpikeStop,
    NonFiniteError,
    NonFiniteStop,
    NoSpace,
    Outcome,
    Preempted,
    RunDirInUse,
    outcome,
    sweep_exit_code,
)


@pytest.mark.parametrize(("error", "status", "code"), [
    (None, "completed", 0),
    (Preempted("SIGTERM", 12), "preempted", 3),
    (NonFiniteStop("nan"), "stopped_nonfinite", 4),
    (GradSpikeStop("spike"), "stopped_grad_spike", 4),  # a NonFiniteStop, but its own status
    (ConfigError("optimizer.lr", "got -1"), "failed", 2),
    (RunDirInUse("hydra.run.dir", "in use"), "failed", 2),
    (NoSpace(Path("/runs"), needed=2000, free=1000), "failed", 5),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "failed", 5),  # a log write's, not only a checkpoint's
    (OSError(errno.EACCES, "Permission denied"), "failed", 1),
    (NonFiniteError("nan"), "failed", 1),  # trainer.nonfinite=raise: a crash, with its traceback
    (RuntimeError("boom"), "failed", 1),
])
def test_how_a_run_ended_gives_its_status_and_exit_code(error, status, code):
    assert outcome(error) == Outcome(status, code)


def test_every_status_of_the_table_is_one_metrics_json_may_hold():
    assert {found.status for _, found in OUTCOMES} <= set(STATUSES) and set(FINISHED) <= set(STATUSES)


@pytest.mark.parametrize(("statuses", "code"), [
    ({"completed", "early_stopped"}, 0),
    ({"completed", "stopped_grad_spike"}, 4),
    ({"stopped_nonfinite", "failed"}, 2),  # a failed job outranks a stopped one
    ({"completed", "failed (no output)"}, 2),
    ({"completed", "preempted"}, 1),
    ({"incomplete (running or killed)"}, 1),
])
def test_a_sweep_exits_with_its_worst_job(statuses, code):
    assert sweep_exit_code(statuses) == code
