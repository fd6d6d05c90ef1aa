"""``trainer.branch_from``: a cooldown branched from update N of a running job, through the real CLI.
A branch is checked against a run that was given the branch's schedule from the start: the same
parameters bit for bit and the same logged LR at every update from N on."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import TINY, run_cli
from tests.test_bad_input import assert_one_line_error
from trainer.compare import branch_parents, collect, lr_figure
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.schedules.curve import read_lr_csv

#: WSD on the tiny job (8 updates per epoch): warmup 4, then η; 16 updates.
WSD = [*TINY, "schedule=wsd", "schedule.warmup_steps=4", "optimizer.lr=0.01", "trainer.max_steps=16"]


@pytest.fixture
def parent(tmp_path):
    """A run that holds η after its warmup (no decay), with a checkpoint every 4 updates kept."""
    run_dir = tmp_path / "parent"
    run_cli("trainer", [*WSD, "schedule.decay_steps=0", "trainer.checkpoint_every_n_steps=4", "trainer.keep_last_n=4",
                        f"hydra.run.dir={run_dir}"])
    return run_dir


def test_a_cooldown_branch_equals_the_run_given_its_schedule_from_the_start(tmp_path, parent):
    reference, branch = tmp_path / "reference", tmp_path / "branch"
    cooldown = ["schedule.decay_steps=8"]  # decays over updates 8..15: the branch point is its start
    run_cli("trainer", [*WSD, *cooldown, f"hydra.run.dir={reference}"])
    start = parent / "step-00000008.pt"
    run_cli("trainer", [*WSD, *cooldown, f"trainer.branch_from={start}", f"hydra.run.dir={branch}"])
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(branch / "last.pt")
    assert a["update"] == b["update"] == 16
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    logged, expected = read_scalars(branch)["train/lr"], read_scalars(reference)["train/lr"]
    assert [step for step, _ in logged] == list(range(8, 16))  # the branch logs its own updates only
    assert logged == expected[8:]
    lineage = {"parent": str(parent), "checkpoint": str(start), "update": 8,
               "checksum": load_checkpoint(start)["checksum"]}
    assert json.loads((branch / "metrics.json").read_text())["lineage"] == lineage
    assert OmegaConf.to_container(OmegaConf.load(branch / "config.yaml").lineage) == lineage


def test_a_branch_whose_lr_would_jump_is_refused_unless_allowed(tmp_path, parent):
    start = parent / "step-00000008.pt"
    branch = tmp_path / "branch"
    cosine = [*TINY, "schedule=cosine", "optimizer.lr=0.01", "trainer.max_steps=16", f"trainer.branch_from={start}",
              f"hydra.run.dir={branch}"]
    proc = run_cli("trainer", cosine, check=False)
    assert_one_line_error(proc, "trainer.branch_lr_jump")
    assert "LR at update 8 is 0.005, its parent's was 0.01" in proc.stderr and not branch.exists()
    run_cli("trainer", [*cosine, "trainer.branch_lr_jump=allow"])
    assert load_checkpoint(branch / "last.pt")["update"] == 16


@pytest.mark.parametrize(("change", "key", "text"), [
    ("model.dropout=0.3", "trainer.resume_accept", "model.dropout: 0.0 -> 0.3"),
    ("optimizer.weight_decay=0.1", "trainer.branch_from", "optimizer.weight_decay: 0.01 -> 0.1"),
    ("data.batch_size=16", "trainer.branch_from", "updates_per_epoch: 8 -> 16"),  # update 8 would be other data
])
def test_a_branch_changes_its_schedule_and_nothing_else(tmp_path, parent, change, key, text):
    branch = tmp_path / "branch"
    proc = run_cli("trainer", [*WSD, "schedule.decay_steps=8", change,
                               f"trainer.branch_from={parent / 'step-00000008.pt'}", f"hydra.run.dir={branch}"],
                   check=False)
    assert_one_line_error(proc, key)
    assert text in proc.stderr and not branch.exists()


def test_a_branch_needs_a_directory_of_its_own_and_resumes_only_itself(tmp_path, parent):
    start = parent / "step-00000008.pt"
    into_parent = run_cli("trainer", [*WSD, "schedule.decay_steps=8", f"trainer.branch_from={start}",
                                      f"hydra.run.dir={parent}"], check=False)
    assert_one_line_error(into_parent, "trainer.branch_from")
    assert "a branch needs a directory of its own" in into_parent.stderr
    branch = tmp_path / "branch"
    run_cli("trainer", [*WSD, "schedule.decay_steps=8", f"trainer.branch_from={start}", f"hydra.run.dir={branch}"])
    other = run_cli("trainer", [*WSD, "schedule.decay_steps=12", f"trainer.branch_from={parent / 'step-00000004.pt'}",
                                "trainer.resume=auto", f"hydra.run.dir={branch}"], check=False)
    assert_one_line_error(other, "trainer.branch_from")
    assert f"is a branch of {start}, not of" in other.stderr


def test_one_command_sweeps_cooldown_lengths_from_one_checkpoint(tmp_path, parent):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("trainer", ["-m", *WSD[:-1], "schedule.decay_steps=4,8", "trainer.max_steps='${add:8,${schedule.decay_steps}}'",
                               f"trainer.branch_from={parent / 'step-00000008.pt'}", f"hydra.sweep.dir={sweep_dir}"])
    assert "sweep: 2 of 2 jobs completed" in proc.stdout
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [load_checkpoint(job / "last.pt")["update"] for job in jobs] == [12, 16]
    for job, length in zip(jobs, (4, 8)):
        lrs = [lr for _, lr in read_scalars(job)["train/lr"]]
        assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01 / length, rel=1e-6)  # linear to 0
        assert json.loads((job / "metrics.json").read_text())["lineage"]["update"] == 8
    # The report draws both branches from update 8 on, over the parent's whole curve (its lr.csv).
    assert f"Branches of `{parent}` at update(s) 8 are drawn over its curve" in (sweep_dir / "report.md").read_text()
    jobs = collect(sweep_dir)
    figure, caption = lr_figure(jobs, branch_parents(jobs))
    lines = {line.get_label(): line for line in figure.axes[0].get_lines() if not line.get_label().startswith("_")}
    parent_lrs = [row["lr/decay"] for row in read_lr_csv(parent / "lr.csv")]
    assert list(lines["parent parent"].get_ydata()) == parent_lrs and len(parent_lrs) == 16
    for job in jobs:
        branch = lines[f"{job.name.split('_', 1)[0]} wsd"]
        assert list(branch.get_xdata()) == list(range(8, job.lineage["update"] + len(branch.get_xdata())))
        assert list(branch.get_ydata()) == [r["lr/decay"] for r in read_lr_csv(sweep_dir / job.name / "lr.csv")[8:]]
    assert "over their parent's curve" in caption
