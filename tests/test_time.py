"""Schedules in seconds of training (``schedule.interval=time``) and the wall-clock budget
(``trainer.max_time``). The LR of update u is the schedule's formula at the training clock's t,
read after update u - 1 stepped; validation and checkpoint writes do not count.

In-process runs read a fake clock (``trainer.training.clock.SOURCE``) that only the model moves:
each training forward pass takes 0.25 s, each validation forward pass 7 s and each checkpoint
(the model's ``state_dict``) 50 s. So t = 0.25 × updates exactly, and any validation or checkpoint
time that leaked into t would show as a jump of 14 s or more. Nothing here sleeps or times: the
one run on the real clock asserts only what holds at any speed."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from torch import nn

import trainer.training.clock as clock_module
from tests.conftest import QUIET, TINY, compose_config, run_cli
from tests.test_bad_input import assert_one_line_error
from tests.test_distributed import LAUNCH_TIMEOUT, env, torchrun_command
from tests.test_resume import preempt_after
from tests.test_schedules import seed000_get_lr
from trainer.app.run import train
from trainer.errors import ConfigError, Preempted
from trainer.preview import write_preview
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.rundir.kill_hook import KILL_HOOK
from trainer.schedules.curve import read_lr_csv
from trainer.training.clock import TrainingClock

TRAIN_S, VAL_S, CHECKPOINT_S = 0.25, 7.0, 50.0
# warmup_cosine over T = 3 s (the budget), warming up for 1 s: 12 updates of 0.25 s, so the run
# stops inside its second epoch of 8 updates, after t = 3.0 is read for update 12.
TIMED = ["schedule=warmup_cosine", "schedule.interval=time", "schedule.warmup_steps=1", "schedule.min_lr=1e-4",
         "optimizer.lr=0.01", "trainer.max_time=3"]


class FakeTime:
    """A clock that moves only when told: seconds from an arbitrary origin."""

    def __init__(self, origin: float) -> None:
        self.now = origin

    def __call__(self) -> float:
        return self.now


class Ticking(nn.Module):
    """A linear classifier of the tiny synthetic job whose every pass costs fake time: a training
    forward 0.25 s, a validation one 7 s, a checkpoint (``state_dict``) 50 s."""

    def __init__(self, time: FakeTime) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.time, self.linear = time, nn.Linear(16, 4)
        self.register_state_dict_pre_hook(lambda *args, **kwargs: self._spend(CHECKPOINT_S))

    def _spend(self, seconds: float) -> None:
        self.time.now += seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._spend(TRAIN_S if self.training else VAL_S)
        return self.linear(x)


def fake_run(monkeypatch, run_dir, *overrides, origin: float = 1000.0) -> FakeTime:
    """Train the tiny job in this process on a fake clock (the model moves it); returns the clock."""
    time = FakeTime(origin)
    monkeypatch.setattr(clock_module, "SOURCE", time)
    train(compose_config(*overrides), run_dir, model=Ticking(time))
    return time


def expected_lr(t: float) -> float:
    return seed000_get_lr(t, 1, 3, 0.01, 1e-4)


def test_every_update_runs_at_the_formula_of_the_clocks_t_with_validation_and_checkpoints_not_counted(
    tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    fake_run(monkeypatch, run_dir, *TIMED)
    rows = read_lr_csv(run_dir / "lr.csv")
    # After epoch 1 (update 8) a validation (2 batches: 14 s) and a checkpoint (50 s) passed: t goes on at 2.25.
    assert [r["update"] for r in rows] == list(range(12))
    assert [r["t"] for r in rows] == [TRAIN_S * u for u in range(12)]
    for column in ("lr/decay", "lr/no_decay"):
        assert [r[column] for r in rows] == pytest.approx([expected_lr(TRAIN_S * u) for u in range(12)],
                                                          rel=1e-12, abs=1e-15)
    logged = read_scalars(run_dir)
    assert logged["train/t"] == [(u, TRAIN_S * u) for u in range(12)]  # multiples of 1/4: exact in float32
    assert [lr for _, lr in logged["train/lr"]] == pytest.approx([r["lr/decay"] for r in rows], rel=1e-6)
    # The budget is spent once t = 3.0 is read for update 12: it ends there, validated and checkpointed.
    assert [step for step, _ in logged["val/loss"]] == [8, 12]
    last = load_checkpoint(run_dir / "last.pt")
    assert last["update"] == 12
    assert last["step"]["clock"] == {"seconds": 3.0, "update": 12, "t": 3.0}
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["updates"] == 12


def test_a_groups_own_schedule_and_the_weight_decays_read_the_same_clock(tmp_path, monkeypatch):
    """The biases on constant (the run's 1 s warmup, at half the LR), every λ following its group's
    LR shape (weight_decay_schedule=lr): each column at the clock's t."""
    run_dir = tmp_path / "run"
    fake_run(monkeypatch, run_dir, *TIMED, "optimizer.weight_decay=0.1", "optimizer.weight_decay_schedule=lr",
             "optimizer.param_groups=[{match: '*.bias', lr_scale: 0.5, schedule: constant}]")
    rows = read_lr_csv(run_dir / "lr.csv")
    ts = [TRAIN_S * u for u in range(12)]
    assert [r["t"] for r in rows] == ts
    expected = {"lr/decay": [expected_lr(t) for t in ts], "lr/no_decay/*.bias": [0.005 * min(t, 1) for t in ts],
                "wd/decay": [0.1 * expected_lr(t) / 0.01 for t in ts], "wd/no_decay/*.bias": [0.0] * 12}
    for column, values in expected.items():
        assert [r[column] for r in rows] == pytest.approx(values, rel=1e-12, abs=1e-15), column
    logged = read_scalars(run_dir)
    assert [v for _, v in logged["train/lr/no_decay/*.bias"]] == pytest.approx(expected["lr/no_decay/*.bias"], rel=1e-6)


def test_a_stopped_time_run_resumes_on_the_same_clock(tmp_path, monkeypatch):
    """SIGTERM during update 9 (mid-epoch 2): last.pt holds update 10 and the clock's 2.5 s; the
    resumed process (its fake clock at another origin) goes on from there, update for update."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fake_run(monkeypatch, straight, *TIMED)
    with monkeypatch.context() as patch:
        preempt_after(patch, 10)
        with pytest.raises(Preempted):
            fake_run(patch, resumed, *TIMED)
    stopped = load_checkpoint(resumed / "last.pt")
    assert stopped["update"] == 10 and stopped["step"]["clock"] == {"seconds": 2.5, "update": 10, "t": 2.5}
    fake_run(monkeypatch, resumed, *TIMED, "trainer.resume=auto", origin=-77.0)
    assert read_lr_csv(resumed / "lr.csv") == read_lr_csv(straight / "lr.csv")
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["update"] == b["update"] == 12 and a["step"]["clock"] == b["step"]["clock"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert read_scalars(straight)["train/t"] == read_scalars(resumed)["train/t"]


def test_a_finished_time_run_resumed_trains_nothing(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    fake_run(monkeypatch, run_dir, *TIMED)
    before = load_checkpoint(run_dir / "last.pt")
    fake_run(monkeypatch, run_dir, *TIMED, "trainer.resume=auto")
    after = load_checkpoint(run_dir / "last.pt")
    assert after["update"] == before["update"] == 12
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"]["updates"] == 12


def test_a_budget_ends_a_schedule_in_updates_at_the_first_update_past_it(tmp_path, monkeypatch):
    """cosine over 100 updates (trainer.max_steps, the cap) and 2 s of training: 8 updates of 0.25 s."""
    run_dir = tmp_path / "run"
    fake_run(monkeypatch, run_dir, "schedule=cosine", "schedule.min_lr=0", "optimizer.lr=0.01", "trainer.max_steps=100",
             "trainer.max_time=2")
    logged = read_scalars(run_dir)
    lrs = [lr for _, lr in logged["train/lr"]]
    assert lrs == pytest.approx([0.005 * (1 + math.cos(math.pi * u / 100)) for u in range(8)], rel=1e-6)
    assert "train/t" not in logged  # the schedule counts updates: t is the update
    assert len(read_lr_csv(run_dir / "lr.csv")) == 100  # the plan's LRs, known before the run
    assert load_checkpoint(run_dir / "last.pt")["update"] == 8


def test_a_budget_added_on_resume_counts_from_the_resume(tmp_path, monkeypatch):
    """A run in updates stopped at its 4th continues under a 1 s budget: 4 updates of 0.25 s more."""
    run_dir, schedule = tmp_path / "run", ["schedule=cosine", "schedule.total_steps=100", "schedule.min_lr=0"]
    fake_run(monkeypatch, run_dir, *schedule, "trainer.max_steps=4")
    fake_run(monkeypatch, run_dir, *schedule, "trainer.max_steps=100", "trainer.max_time=1", "trainer.resume=auto")
    last = load_checkpoint(run_dir / "last.pt")
    assert last["update"] == 8 and last["step"]["clock"] == {"seconds": 1.0, "update": 8, "t": 1.0}
    lrs = [lr for _, lr in read_scalars(run_dir)["train/lr"]]
    assert lrs == pytest.approx([0.0005 * (1 + math.cos(math.pi * u / 100)) for u in range(8)], rel=1e-6)


def test_a_schedule_in_seconds_cannot_continue_a_checkpoint_without_a_clock(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    fake_run(monkeypatch, run_dir, "schedule=cosine", "schedule.total_steps=100", "trainer.max_steps=4")
    with pytest.raises(ConfigError, match="holds no training clock"):
        fake_run(monkeypatch, run_dir, "schedule=cosine", "schedule.interval=time", "schedule.total_steps=100",
                 "trainer.max_steps=8", "trainer.resume=auto", "trainer.resume_schedule=override")


def test_a_run_in_updates_has_no_clock(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    fake_run(monkeypatch, run_dir, "schedule=cosine", "trainer.max_steps=3")
    assert set(load_checkpoint(run_dir / "last.pt")["step"]) == {"precision", "scaler"}
    assert "train/t" not in read_scalars(run_dir)


def test_the_clock_stands_still_while_paused_and_gives_each_rank_the_same_stamps():
    time = FakeTime(10.0)
    clock_module.SOURCE, original = time, clock_module.SOURCE
    try:
        clock = TrainingClock(max_time=5)
    finally:
        clock_module.SOURCE = original
    clock.start()
    time.now += 1.5
    assert clock.stamp(1) == 1.5
    with clock.paused():
        time.now += 100
        with clock.paused():  # a checkpoint inside a validation's block
            time.now += 100
        time.now += 100
        assert clock.state_dict() == {"seconds": 1.5, "update": 1, "t": 1.5}
    time.now += 2
    assert clock.stamp(2) == 3.5 and clock.at(1) == 1.5 and clock.spent() is None
    time.now += 1.5
    assert clock.stamp(3) == 5.0 and clock.spent().status == "completed"
    with pytest.raises(KeyError):
        clock.at(1)  # only the newest two stamps are kept


def test_the_preview_draws_time_against_the_throughput_it_is_given_and_says_so(tmp_path, capsys):
    cfg = compose_config("schedule=warmup_cosine", "schedule.interval=time", "schedule.warmup_steps=60",
                         "schedule.min_lr=0", "optimizer.lr=0.01", "trainer.max_time=600")
    rows = write_preview(cfg, tmp_path, updates_per_second=2.5)
    assert len(rows) == 1500  # t = u / 2.5 < 600
    assert [r["t"] for r in rows] == [u / 2.5 for u in range(1500)]
    assert [r["lr/decay"] for r in rows] == pytest.approx([seed000_get_lr(u / 2.5, 60, 600, 0.01, 0.0)
                                                           for u in range(1500)], rel=1e-12, abs=1e-15)
    assert "an estimated throughput (preview.updates_per_second)" in capsys.readouterr().out


def test_a_real_budget_through_the_cli(tmp_path):
    """2 s of training on the real clock: every logged LR is the formula at its logged t, every t is
    inside the budget, and the run stopped at the first update whose t reached it, then validated
    and checkpointed."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [*TINY, "data.train_size=2048", "schedule=linear", "schedule.interval=time",
                        "schedule.min_lr=1e-4", "optimizer.lr=0.01", "trainer.max_time=2", f"hydra.run.dir={run_dir}"])
    rows = read_lr_csv(run_dir / "lr.csv")
    ts = [r["t"] for r in rows]
    assert [r["update"] for r in rows] == list(range(len(rows))) and ts[0] == 0.0
    assert all(a < b for a, b in zip(ts, ts[1:])) and ts[-1] < 2
    assert [r["lr/decay"] for r in rows] == pytest.approx([0.01 + (1e-4 - 0.01) * t / 2 for t in ts], rel=1e-12)
    last = load_checkpoint(run_dir / "last.pt")
    assert last["update"] == len(rows) and last["step"]["clock"]["t"] >= 2
    logged = read_scalars(run_dir)
    assert [t for _, t in logged["train/t"]] == pytest.approx(ts, rel=1e-6)
    assert logged["val/loss"][-1][0] == len(rows)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_kill_9_resumes_on_the_checkpoints_clock(tmp_path):
    """SIGKILL at the start of the second checkpoint write (update 40; last.pt holds update 20): the
    resumed run trains update 20 at the t the checkpoint kept and goes on from there, every update
    in lr.csv once, t increasing throughout (no clock restarted at 0), the LR the formula at each.
    (The first run must reach update 40 inside the 2 s budget: 50 ms per update of a tiny MLP.)"""
    run_dir = tmp_path / "run"
    args = [*TINY, "data.train_size=2048", "schedule=linear", "schedule.interval=time", "schedule.min_lr=1e-4",
            "optimizer.lr=0.01", "trainer.max_time=2", "trainer.checkpoint_every_n_steps=20", "trainer.resume=auto",
            f"hydra.run.dir={run_dir}"]
    killed = run_cli("trainer", args, check=False, env={KILL_HOOK: "2:0"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = load_checkpoint(run_dir / "last.pt")
    assert saved["update"] == 20
    run_cli("trainer", args)
    rows = read_lr_csv(run_dir / "lr.csv")
    ts = [r["t"] for r in rows]
    assert [r["update"] for r in rows] == list(range(len(rows))) and len(rows) > 20
    assert ts[20] == saved["step"]["clock"]["t"] and all(a < b for a, b in zip(ts, ts[1:])) and ts[-1] < 2
    assert [r["lr/decay"] for r in rows] == pytest.approx([0.01 + (1e-4 - 0.01) * t / 2 for t in ts], rel=1e-12)
    last = load_checkpoint(run_dir / "last.pt")
    assert last["update"] == len(rows) and last["step"]["clock"]["t"] >= 2


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (["schedule.interval=time"], "schedule.interval", "set trainer.max_time"),
    (["trainer.max_time=60"], "trainer.max_time", "schedule.interval=time"),
    (["schedule.interval=time", "trainer.max_time=60", "trainer.unfreeze=[{at: 10, modules: ['1']}]"],
     "trainer.unfreeze", "seconds"),
    (["schedule.interval=time", "trainer.max_time=60", "trainer.branch_from=elsewhere/step-00000008.pt"],
     "trainer.branch_from", "not supported"),
    (["trainer.max_time=0"], "trainer.max_time", "expected an integer >= 1"),
])
def test_what_a_clock_cannot_do_is_one_line(tmp_path, overrides, key, text):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*TINY, *overrides, f"hydra.run.dir={run_dir}"], check=False)
    assert_one_line_error(proc, key)
    assert text in proc.stderr and not run_dir.exists()


def test_the_preview_refuses_a_time_schedule_without_a_throughput(tmp_path):
    run_dir = tmp_path / "p"
    proc = run_cli("trainer.preview", [*QUIET, "schedule.interval=time", "trainer.max_time=60",
                                       f"hydra.run.dir={run_dir}"], check=False)
    assert_one_line_error(proc, "preview.updates_per_second")
    assert not run_dir.exists()


def test_two_ranks_apply_the_same_lr_at_every_update_and_stop_together(tmp_path):
    """Each process writes down the LR of each of its steps (a user's optimizer): on the real
    clock two processes read different times, so only rank 0's reading, given to both, makes
    the lists equal; both stop at the same update, or the launch would hang."""
    run_dir, record = tmp_path / "run", tmp_path / "lrs"
    record.mkdir()
    proc = subprocess.run(torchrun_command(
        *TINY, "data.batch_size=16", "trainer.global_batch_size=32", "schedule=linear", "schedule.interval=time",
        "schedule.min_lr=0", "trainer.max_time=1", "optimizer=target", "optimizer._target_=tests.userpkg.optim.RecordingAdamW",
        f"+optimizer.record_dir={record}", "trainer.val_every_n_epochs=1000", "trainer.checkpoint_every_n_epochs=1000",
        f"hydra.run.dir={run_dir}",
    ), cwd=tmp_path.parent, env=env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [(record / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert len(ranks[0]) > 1 and ranks[0] == ranks[1]
    logged = [float(line.split()[0]) for line in ranks[0]]
    assert logged == [r["lr/decay"] for r in read_lr_csv(run_dir / "lr.csv")]
    assert load_checkpoint(run_dir / "last.pt")["update"] == len(logged)
