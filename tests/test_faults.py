"""Faults that kill long runs: NaN losses, fp16 overflow skips, SIGTERM/SIGINT."""

from __future__ import annotations

import copy
import dataclasses
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.conftest import REPO, TINY, compose_config
from tests.test_loop import batch, linear_setup, make_step
from trainer.app import run as run_module
from trainer.app.run import train
from trainer.controls.nonfinite import NonFinite
from trainer.controls.signals import StopOnSignal
from trainer.data.batches import epoch_order
from trainer.distributed import World
from trainer.errors import EXIT_PREEMPTED, NonFiniteError, NonFiniteStop
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.schedules.schedule import apply_schedule
from trainer.training.precision import unit_grad_scaler

POISONED = (5, 77, 140)  # training examples set to NaN


def poison(monkeypatch, examples) -> None:
    """Synthetic data with NaN ``examples``: exactly the updates whose batch holds one go bad."""
    build = run_module.build_dataset

    def poisoned(cfg, seed, **options):
        dataset = build(cfg, seed, **options)
        x = dataset.train_x.clone()
        x[list(examples)] = float("nan")
        return dataclasses.replace(dataset, train_x=x)

    monkeypatch.setattr(run_module, "build_dataset", poisoned)


@pytest.fixture
def poisoned_data(monkeypatch):
    poison(monkeypatch, POISONED)


def bad_updates(epochs: int, batch_size: int = 32, per_epoch: int = 8) -> list[int]:
    bad = []
    for epoch in range(epochs):
        order = epoch_order(256, seed=0, epoch=epoch)
        for b in range(per_epoch):
            if set(order[b * batch_size : (b + 1) * batch_size].tolist()) & set(POISONED):
                bad.append(epoch * per_epoch + b)
    return bad


def test_skip_policy_skips_exactly_the_bad_updates_and_keeps_the_schedule(tmp_path, poisoned_data):
    metrics = train(compose_config("schedule=linear", "optimizer.lr=0.01", "trainer.max_epochs=3"), tmp_path)
    expected = bad_updates(3)
    assert expected and metrics["skipped_updates"] == len(expected)
    logs = read_scalars(tmp_path)
    skipped = [int(v) for _, v in logs["train/skipped_updates"]]  # logged after each update's step
    assert skipped == [sum(1 for b in expected if b <= u) for u in range(24)]
    assert [v for _, v in logs["train/lr"]] == pytest.approx([0.01 * (1 - t / 24) for t in range(24)])
    state = load_checkpoint(tmp_path / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_stop_policy_saves_finite_parameters_and_stops(tmp_path, poisoned_data):
    first_bad = bad_updates(1)[0]
    with pytest.raises(NonFiniteStop, match=f"by update {first_bad + 1}"):
        train(compose_config("schedule=cosine", "trainer.nonfinite=stop", "trainer.max_epochs=3"), tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["update"] == first_bad + 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_stop_policy_keeps_the_last_checkpoint_before_the_first_bad_update_and_says_so(tmp_path, monkeypatch):
    # 512 examples, 16 updates an epoch; the first example of batch 10 is NaN: update 10 is the first
    # bad one. Checkpoints every 3 updates; logged every 4, so the bad update is not logged: the save
    # at 12 must see it.
    poison(monkeypatch, [int(epoch_order(512, seed=0, epoch=0)[10 * 32])])
    run = ["schedule=cosine", "data.train_size=512", "trainer.nonfinite=stop", "trainer.max_epochs=1",
           "trainer.checkpoint_every_n_steps=3", "logger.log_every_n_steps=4"]
    with pytest.raises(NonFiniteStop) as stop:
        train(compose_config(*run), tmp_path)
    good = tmp_path / "last_good.pt"
    assert f"by update 12; the bad updates were skipped, so the parameters are still finite; saved them in " \
           f"{tmp_path / 'last.pt'}; the last checkpoint before it is {good} (update 9): resume from it with " \
           f"trainer.resume={good}" in str(stop.value)
    assert load_checkpoint(good)["update"] == 9 and load_checkpoint(tmp_path / "last.pt")["update"] == 12
    assert load_checkpoint(good)["controls"]["nonfinite"]["skipped_updates"] == 0


def test_resuming_from_last_good_and_stopping_again_keeps_last_good(tmp_path, monkeypatch):
    """The recovery the stop message suggests, run without changing anything: the same bad update
    stops it again, before its first checkpoint; last_good.pt is not this run's last checkpoint,
    so it must stay as it was (before, the first run's last.pt replaced it)."""
    poison(monkeypatch, [int(epoch_order(512, seed=0, epoch=0)[10 * 32])])
    run = ["schedule=cosine", "data.train_size=512", "trainer.nonfinite=stop", "trainer.max_epochs=1",
           "trainer.checkpoint_every_n_steps=3", "logger.log_every_n_steps=4"]
    with pytest.raises(NonFiniteStop):
        train(compose_config(*run), tmp_path)
    good = tmp_path / "last_good.pt"
    with pytest.raises(NonFiniteStop, match="no checkpoint was written before it"):
        train(compose_config(*run, f"trainer.resume={good}"), tmp_path)
    assert load_checkpoint(good)["update"] == 9 and load_checkpoint(tmp_path / "last.pt")["update"] == 12


def test_raise_policy_raises(tmp_path, poisoned_data):
    with pytest.raises(NonFiniteError):
        train(compose_config("schedule=cosine", "trainer.nonfinite=raise", "trainer.max_epochs=3"), tmp_path)


def test_a_unit_scale_stays_one_through_skipped_updates():
    """bf16/fp32 on CUDA go through a scale-1 GradScaler (built the same way here on the CPU):
    skipped updates must not halve its scale, or later updates would shrink by 2^-skips."""
    model, optimizer, schedule = linear_setup(lr=0.1, total=10)
    reference = copy.deepcopy(model)
    nonfinite = NonFinite("skip", device=torch.device("cpu"), world=World())
    step = make_step(model, optimizer, schedule, controls=[nonfinite])
    step.scaler = unit_grad_scaler("cpu")
    apply_schedule(optimizer, schedule, 0)
    x, y = batch()
    for update in range(3):
        step([(torch.full_like(x, float("nan")), y)], update)
    assert step.scaler.get_scale() == 1.0 and int(nonfinite.skipped_updates) == 3
    step([(x, y)], 3)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=schedule.lr(3))  # the slot of update 3
    nn.functional.cross_entropy(reference(x), y).backward()
    ref_optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)  # exactly one unscaled SGD step


def test_fp16_overflow_skips_are_counted_and_advance_the_schedule_once():
    """A loss scale of 2**127 on a large loss overflows fp32 at first; the scaler halves it until
    steps succeed."""
    model, optimizer, schedule = linear_setup(lr=0.1, total=40)
    nonfinite = NonFinite("skip", device=torch.device("cpu"), world=World())
    step = make_step(model, optimizer, schedule, clip=None, controls=[nonfinite])
    step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=10**6)
    apply_schedule(optimizer, schedule, 0)
    moved = []
    for update in range(30):
        before = [p.detach().clone() for p in model.parameters()]
        x, y = batch(seed=update)
        step([(x * 1000, y)], update)  # loss in the hundreds: times 2**127 is inf in fp32
        moved.append(any(not torch.equal(p, q) for p, q in zip(model.parameters(), before)))
    skipped = moved.count(False)
    assert 0 < skipped < 30
    assert moved[:skipped] == [False] * skipped and all(moved[skipped:])  # skips first, then real steps
    assert int(nonfinite.skipped_updates) == skipped
    # One schedule advance per update, skipped or not: after 30 updates the LR is the one for t=30.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 30 / 40))


def test_first_signal_is_a_request_second_sigint_interrupts():
    # Whatever was in place before (SIG_IGN when pytest runs as a background job) comes back after.
    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_to_the_real_cli_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, f"hydra.run.dir={run_dir}", "schedule=linear", "optimizer.lr=0.01", "trainer.max_epochs=200"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait (without sleeping) until training is under way
        if "after 8 updates" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert "stopped by SIGTERM" in stderr and "trainer.resume=auto" in stderr
    stopped_at = load_checkpoint(run_dir / "last.pt")["update"]
    assert 8 <= stopped_at < 1600

    resumed = subprocess.run([sys.executable, "-m", "trainer", *args, "trainer.resume=auto"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    lrs = read_scalars(run_dir)["train/lr"]
    assert [s for s, _ in lrs] == list(range(1600))  # no gap, no duplicate across the restart
    assert [v for _, v in lrs] == pytest.approx([0.01 * (1 - t / 1600) for t in range(1600)], abs=1e-9)
    assert load_checkpoint(run_dir / "last.pt")["update"] == 1600
