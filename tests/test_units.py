"""Schedules counted in training examples or tokens (``schedule.interval=sample|token``), and run
lengths given the same way (``trainer.max_samples``, ``trainer.max_tokens``). The LR is still set
per optimizer update, from the count reached before it: update u trains at the schedule's value at
t = u × (examples or tokens per update). Expectations: seed 000's formula evaluated at that t."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import QUIET, REPO, TINY, compose_config, run_cli
from tests.forked_cli import ForkedCLI
from tests.test_bad_input import assert_one_line_error
from tests.test_experiments import text_file
from tests.test_resume import straight_and_resumed
from tests.test_schedules import seed000_get_lr
from trainer.app.run import train
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.schedules.curve import read_lr_csv


def lr_values(run_dir):
    return [value for _, value in read_scalars(run_dir)["train/lr"]]


def test_a_sample_schedule_and_budget_through_the_cli(tmp_path):
    """32 examples per update; a 100-example warmup ends inside update 4 (t = 128); the budget of
    1000 examples takes the 32 updates that first reach it (1024 examples), which is also T."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [*TINY, "schedule=warmup_cosine", "schedule.interval=sample", "schedule.warmup_steps=100",
                        "schedule.min_lr=1e-4", "optimizer.lr=0.01", "trainer.max_samples=1000", f"hydra.run.dir={run_dir}"])
    expected = [seed000_get_lr(u * 32, 100, 1024, 0.01, 1e-4) for u in range(32)]
    assert lr_values(run_dir) == pytest.approx(expected, rel=1e-6, abs=1e-12)  # the event file holds float32
    assert [r["t"] for r in read_lr_csv(run_dir / "lr.csv")] == [u * 32 for u in range(32)]
    assert [step for step, _ in read_scalars(run_dir)["train/lr"]] == list(range(32))


def test_samples_count_the_examples_trained_on_when_an_epoch_ends_ragged(tmp_path):
    """250 examples in batches of 32: each epoch's last 26 are dropped (7 whole updates per epoch),
    so t stays 32 per update across epoch ends, and 500 examples take 16 updates (512 examples)."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [*TINY, "data.train_size=250", "schedule=warmup_cosine", "schedule.interval=sample",
                        "schedule.warmup_steps=64", "schedule.min_lr=0", "optimizer.lr=0.01", "trainer.max_samples=500",
                        f"hydra.run.dir={run_dir}"])
    assert [r["t"] for r in read_lr_csv(run_dir / "lr.csv")] == [u * 32 for u in range(16)]
    expected = [seed000_get_lr(u * 32, 64, 512, 0.01, 0.0) for u in range(16)]
    assert lr_values(run_dir) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert [step for step, _ in read_scalars(run_dir)["val/loss"]] == [7, 14, 16]  # epochs of 7 updates


def test_a_token_schedule_and_budget_on_text(tmp_path):
    """Windows of 8 characters, 4 per update: 32 tokens per update; 2000 tokens take 63 updates (2016 tokens)."""
    run_dir = tmp_path / "run"
    run_cli("trainer.preview", [
        *QUIET, "model=gpt", "data=shakespeare_char", f"data.path={text_file(tmp_path)}", "data.batch_size=4",
        "model.block_size=8", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "schedule=warmup_cosine",
        "schedule.interval=token", "schedule.warmup_steps=200", "schedule.min_lr=0", "optimizer.lr=0.001",
        "trainer.max_tokens=2000", f"hydra.run.dir={run_dir}"])
    rows = read_lr_csv(run_dir / "lr.csv")
    assert [r["t"] for r in rows] == [u * 32 for u in range(63)]
    expected = [seed000_get_lr(u * 32, 200, 63 * 32, 0.001, 0.0) for u in range(63)]
    assert [r["lr/decay"] for r in rows] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_an_unfreeze_stage_in_examples_joins_at_the_first_update_past_it(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("trainer", [*TINY, "schedule=constant", "schedule.interval=sample", "trainer.max_steps=8",
                        "trainer.unfreeze=[{at: 100, modules: ['1']}]", f"hydra.run.dir={run_dir}"])
    frozen = dict(read_scalars(run_dir)["train/lr/decay/unfreeze1"])
    # 100 examples are first passed before update 4 (128 examples): updates 0..3 frozen
    assert [frozen[u] == 0.0 for u in range(8)] == [True] * 4 + [False] * 4


@pytest.mark.parametrize("interval", ["sample", "epoch"])
def test_stop_and_resume_in_examples_equals_uninterrupted(tmp_path, monkeypatch, interval):
    run = ["schedule=warmup_cosine", f"schedule.interval={interval}", "schedule.warmup_ratio=0.2",
           "schedule.warmup_steps=0", "trainer.max_epochs=3"]
    straight, resumed = straight_and_resumed(tmp_path, monkeypatch, run, stop_after=11)
    assert straight["update"] == resumed["update"] == 24
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert lr_values(tmp_path / "straight") == lr_values(tmp_path / "resumed")


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (["schedule.interval=token"], "schedule.interval", "use sample"),
    (["trainer.max_tokens=1000"], "trainer.max_tokens", "give the budget as trainer.max_samples"),
    (["trainer.max_steps=10", "trainer.max_samples=100"], "trainer.max_samples", "set 2 ways"),
    (["schedule=onecycle", "schedule.interval=sample"], "schedule.interval", "defined per optimizer update"),
])
def test_a_unit_the_run_cannot_count_is_one_line(tmp_path, overrides, key, text):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*TINY, *overrides, f"hydra.run.dir={run_dir}"], check=False)
    assert_one_line_error(proc, key)
    assert text in proc.stderr and not run_dir.exists()


#: Per unit, a run of 3 epochs with a warmup and a budget in that unit (checkpoint every 3 updates).
KILLED_RUNS = {
    "sample": ["schedule.warmup_steps=100", "trainer.max_samples=768"],  # 24 updates of 32 examples
    "token": ["model=gpt", "data=shakespeare_char", "model.block_size=8", "model.n_layer=1", "model.n_head=2",
              "model.n_embd=16", "schedule.warmup_steps=300", "trainer.max_tokens=1600"],  # 50 updates of 32 tokens
}


def killed_and_straight(run: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """``run`` through the real CLI, SIGKILLed after its first validation and resumed with
    ``trainer.resume=auto``, and the same run never killed, in this process: their run directories."""
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    with ForkedCLI(REPO) as cli:
        code, output = cli.run([*run, f"hydra.run.dir={killed}", "trainer.resume=auto"], kill_after_validations=1)
        assert code == -9, output
        assert load_checkpoint(killed / "last.pt")["update"] > 0
        code, output = cli.run([*run, f"hydra.run.dir={killed}", "trainer.resume=auto"])
        assert code == 0, output
    train(compose_config(*run, base=[]), straight)
    return killed, straight


@pytest.mark.parametrize("interval", sorted(KILLED_RUNS))
def test_a_run_counted_in_units_killed_by_sigkill_resumes_exactly(tmp_path, interval):
    """SIGKILL after the first validation, then ``trainer.resume=auto``: the same parameters and
    the same LR at every logged update as a run never killed (the count resumes with the update)."""
    base = [*QUIET, f"data.path={text_file(tmp_path)}", "data.batch_size=4"] if interval == "token" else TINY
    run = [*base, *KILLED_RUNS[interval], "schedule=warmup_cosine", f"schedule.interval={interval}",
           "optimizer.lr=0.01", "trainer.checkpoint_every_n_steps=3"]
    killed, straight = killed_and_straight(run, tmp_path)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["update"] == b["update"] > 8
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert read_scalars(killed)["train/lr"] == read_scalars(straight)["train/lr"]
