"""Exact resume: stop anywhere, resume, and end bit-identical to a run that never stopped."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from tests.conftest import QUIET, TINY, compose_config
from trainer.app.run import train
from trainer.errors import ConfigError, Preempted
from trainer.optim.factory import load_optimizer_state, optimizer_state
from trainer.rundir.atomic import save_atomic
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.training.evaluate import Validation
from trainer.training.step import TrainStep

# 8 updates per epoch with the tiny synthetic job; 5 epochs = 40 updates.
CASES = {
    "warmup_cosine": ["schedule=warmup_cosine", "schedule.warmup_steps=6", "optimizer.lr=0.01"],
    "onecycle": ["schedule=onecycle", "optimizer=sgd", "optimizer.lr=0.05"],
    "per_epoch_step": ["schedule=step", "schedule.interval=epoch", "schedule.step_size=2", "optimizer=sgd"],
    "accumulation": ["schedule=cosine", "trainer.accumulate_grad_batches=2", "data.train_size=512"],
    "plateau": ["schedule=plateau", "schedule.patience=0", "schedule.threshold=0.5", "optimizer.lr=0.01"],
    # a warmup, then a plateau that ignores the validation at update 8 and starts counting at 16 ({{ }}: .format)
    "chain_plateau": ["schedule=chain", "optimizer.lr=0.01",
                      "schedule.phases=[{{name:linear_warmup,steps:12}},{{name:plateau,patience:0,threshold:0.5}}]"],
    "dropout_wsd": ["schedule=wsd", "schedule.warmup_steps=4", "schedule.decay_steps=10", "model.dropout=0.3"],
    "dataloader_workers": ["schedule=cosine", "data.loader=dataloader", "data.num_workers=2"],
    # random text windows and dropout in every block: 2,000 characters, 1799 // 8 // 8 = 28 updates/epoch
    "gpt_text": [*QUIET, "model=gpt", "data=shakespeare_char", "data.path={text}", "data.batch_size=8", "model.block_size=8",
                 "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "schedule=cosine"],
}


def preempt_after(monkeypatch, stop_after: int) -> None:
    """Deliver a real SIGTERM while update ``stop_after - 1`` runs (as a scheduler would)."""
    original = TrainStep.__call__

    def call(self, micro_batches, update):
        if update == stop_after - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, micro_batches, update)

    monkeypatch.setattr(TrainStep, "__call__", call)


def straight_and_resumed(tmp_path, monkeypatch, overrides: list[str], stop_after: int) -> tuple[dict, dict]:
    """``last.pt`` of a run never stopped (in ``tmp_path/straight``), and of the same run stopped by
    SIGTERM during update ``stop_after - 1`` and resumed with ``trainer.resume=auto`` (``tmp_path/resumed``)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(compose_config(*overrides), straight)
    with monkeypatch.context() as patch:
        preempt_after(patch, stop_after)
        with pytest.raises(Preempted):
            train(compose_config(*overrides), resumed)
    train(compose_config(*overrides, "trainer.resume=auto"), resumed)
    return load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")


def final_state(run_dir):
    return load_checkpoint(run_dir / "last.pt")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("stop_after", [11, 16])  # mid-epoch, and right at an epoch end
def test_stop_resume_equals_uninterrupted(tmp_path, monkeypatch, case, stop_after):
    text = tmp_path / "text.txt"
    text.write_text("".join(chr(97 + (i * i) % 26) for i in range(2000)), encoding="utf-8")
    overrides = [o.format(text=text) for o in CASES[case]] + ["trainer.max_epochs=5"]
    base = [] if "model=gpt" in overrides else TINY
    straight = tmp_path / "straight"
    train(compose_config(*overrides, base=base), straight)

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        preempt_after(patch, stop_after)
        with pytest.raises(Preempted) as stopped:
            train(compose_config(*overrides, base=base), resumed)
    assert stopped.value.update == stop_after
    assert load_checkpoint(resumed / "last.pt")["update"] == stop_after
    train(compose_config(*overrides, "trainer.resume=auto", base=base), resumed)

    a, b = final_state(straight), final_state(resumed)
    assert a["update"] == b["update"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    logs_a, logs_b = read_scalars(straight), read_scalars(resumed)
    for tag in ("train/lr", "train/loss", "val/loss"):
        assert logs_a[tag] == logs_b[tag], tag


def test_checkpoint_every_n_steps_and_keep_last_n(tmp_path):
    train(compose_config("schedule=cosine", "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=3",
                         "trainer.keep_last_n=2"), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "last.pt", "step-00000015.pt",
                                                              "step-00000016.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["update"] == 16


def test_best_checkpoint_tracks_the_objective(tmp_path):
    train(compose_config("schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=3"), tmp_path)
    val = dict(read_scalars(tmp_path)["val/loss"])
    best_update = min(val, key=val.get)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["update"] == best_update
    assert best["checkpoints"]["best"] == pytest.approx(val[best_update], rel=1e-6)


def test_changed_schedule_is_refused_with_the_difference_unless_overridden(tmp_path):
    run = ["schedule=wsd", "schedule.warmup_steps=4", "schedule.decay_steps=0", "trainer.max_epochs=4"]
    train(compose_config(*run, "trainer.max_steps=16", "schedule.total_steps=32"), tmp_path)
    branch = [*run, "schedule.decay_steps=16", "schedule.total_steps=32", "trainer.resume=auto"]
    with pytest.raises(ConfigError) as error:
        train(compose_config(*branch), tmp_path)
    assert error.value.key == "trainer.resume_schedule"
    assert "decay_steps: 0 -> 16" in str(error.value)
    # the WSD branch: the stable phase's checkpoint continues into a cooldown
    train(compose_config(*branch, "trainer.resume_schedule=override"), tmp_path)
    lrs = dict(read_scalars(tmp_path)["train/lr"])
    assert lrs[15] == pytest.approx(1e-3) and lrs[16] == pytest.approx(1e-3)
    assert lrs[24] == pytest.approx(1e-3 * 0.5) and lrs[31] == pytest.approx(1e-3 / 16)


@pytest.mark.parametrize(("later", "diff"), [
    (["schedule.temperature=2"], "lr_scale: 1.0 -> 2.0"),
    (["optimizer.lr_scaling=sqrt", "optimizer.reference_batch_size=8"], "lr_scale: 1.0 -> 2.0"),
    (["schedule.warmup_start_lr=1e-4"], "warmup_start_lr: 0.0 -> 0.0001"),
])
def test_a_changed_lr_scale_or_warmup_start_is_a_changed_schedule(tmp_path, later, diff):
    run = ["schedule=warmup_cosine", "schedule.warmup_steps=4", "schedule.total_steps=16", "trainer.max_epochs=1"]
    train(compose_config(*run), tmp_path)
    with pytest.raises(ConfigError, match=diff):
        train(compose_config(*run, *later, "trainer.max_epochs=2", "trainer.resume=auto"), tmp_path)


def test_a_checkpoint_of_the_first_format_is_refused_in_one_line(tmp_path):
    """trainer-checkpoint/1 (flat keys, before the named states) is not read: nothing was released."""
    train(compose_config("schedule=cosine", "trainer.max_epochs=1"), tmp_path / "ok")
    state = load_checkpoint(tmp_path / "ok" / "last.pt")
    old = {key: state[key] for key in ("update", "model", "optimizer", "rng", "config")}
    save_atomic({**old, "format": "trainer-checkpoint/1", "scaler": {}, "schedule": {}}, tmp_path / "old.pt")
    with pytest.raises(ConfigError) as error:
        train(compose_config("schedule=cosine", f"trainer.resume={tmp_path / 'old.pt'}"), tmp_path / "new")
    assert error.value.key == "trainer.resume" and "trainer-checkpoint/1" in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "new").exists()


@pytest.mark.parametrize(("later", "diff"), [
    (["optimizer.weight_decay=0.5"], "optimizer.weight_decay: 0.01 -> 0.5"),
    (["optimizer.betas=[0.5,0.5]"], "optimizer.betas: [0.9, 0.999] -> [0.5, 0.5]"),
    (["optimizer=sgd", "optimizer.lr=0.001"], "optimizer.name: 'adamw' -> 'sgd'"),
])
def test_a_changed_optimizer_setting_is_refused_like_a_schedule_change(tmp_path, later, diff):
    run = ["schedule=cosine", "schedule.total_steps=16", "trainer.max_epochs=1"]
    train(compose_config(*run), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(compose_config(*run, *later, "trainer.max_epochs=2", "trainer.resume=auto"), tmp_path)
    assert error.value.key == "trainer.resume_schedule" and diff in str(error.value)


def test_another_optimizers_state_is_refused_even_when_overriding(tmp_path):
    run = ["schedule=cosine", "schedule.total_steps=16", "trainer.max_epochs=1"]
    train(compose_config(*run), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(compose_config(*run, "optimizer=sgd", "optimizer.lr=0.001", "trainer.max_epochs=2",
                             "trainer.resume=auto", "trainer.resume_schedule=override"), tmp_path)
    assert error.value.key == "trainer.resume" and "it holds AdamW state, which does not fit SGD" in str(error.value)


def test_a_range_test_resumes_to_the_same_suggestion_and_ends_where_it_diverged(tmp_path, monkeypatch):
    run = ["schedule=lr_range_test", "schedule.num_steps=40", "schedule.max_lr=10"]
    straight = tmp_path / "straight"
    train(compose_config(*run), straight)
    found = json.loads((straight / "lr_find.json").read_text())
    diverged = len(read_scalars(straight)["train/lr"])
    assert diverged < 40  # the loss ran away before the last LR: the case that needs the history
    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        preempt_after(patch, 24)
        with pytest.raises(Preempted):
            train(compose_config(*run), resumed)
    train(compose_config(*run, "trainer.resume=auto"), resumed)
    assert json.loads((resumed / "lr_find.json").read_text()) == found
    train(compose_config(*run, "trainer.resume=auto"), resumed)  # resuming the finished test trains nothing
    assert json.loads((resumed / "lr_find.json").read_text()) == found
    assert read_scalars(resumed)["train/lr"] == read_scalars(straight)["train/lr"]
    assert len(read_scalars(resumed)["train/lr"]) == diverged


def test_atomic_write_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"format": "x", "value": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk died")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_atomic({"format": "x", "value": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_foreign_and_wrong_model_checkpoints_are_clear_errors(tmp_path):
    train(compose_config("schedule=cosine", "trainer.max_epochs=1"), tmp_path / "ok")
    good = (tmp_path / "ok" / "last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, words in [(truncated, "not a checkpoint of ours: it is damaged, truncated"), (foreign, "not a trainer checkpoint"),
                        (tmp_path / "missing.pt", "no checkpoint at")]:
        with pytest.raises(ConfigError) as error:
            train(compose_config("schedule=cosine", f"trainer.resume={path}"), tmp_path / "new")
        assert str(path) in str(error.value) and words in str(error.value)
    other_model = ["schedule=cosine", "trainer.max_epochs=1", "model.hidden_sizes=[64]",
                   f"trainer.resume={tmp_path / 'ok' / 'last.pt'}"]
    with pytest.raises(ConfigError) as error:  # the config says so first
        train(compose_config(*other_model), tmp_path / "new")
    assert error.value.key == "trainer.resume_accept" and "model.hidden_sizes: [128] -> [64]" in str(error.value)
    with pytest.raises(ConfigError) as error:  # accepted, the weights still do not fit
        train(compose_config(*other_model, "trainer.resume_accept=[model.hidden_sizes]"), tmp_path / "new")
    assert "does not fit this run" in str(error.value) and "size mismatch" in str(error.value)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("end", ["trainer.max_epochs=2", "trainer.max_steps=20"])  # at an epoch's end, or within one
def test_resuming_a_finished_run_trains_and_validates_nothing_and_reports_its_metrics(tmp_path, monkeypatch, end):
    overrides = ["schedule=cosine", end]
    first = train(compose_config(*overrides), tmp_path)
    written = (tmp_path / "last.pt").stat().st_mtime_ns

    def no_more(*args, **kwargs):
        raise AssertionError("a finished run was evaluated again")

    monkeypatch.setattr(Validation, "__call__", no_more)
    again = train(compose_config(*overrides, "trainer.resume=auto"), tmp_path)
    assert again["updates"] == first["updates"] == (16 if "epochs" in end else 20)
    assert again["val/loss"] == first["val/loss"]
    logs = read_scalars(tmp_path)
    assert [s for s, _ in logs["train/lr"]] == list(range(first["updates"]))
    assert [s for s, _ in logs["val/loss"]] == [8, 16] + ([20] if first["updates"] == 20 else [])
    assert (tmp_path / "last.pt").stat().st_mtime_ns == written  # not written again


def test_checkpoint_every_n_epochs(tmp_path):
    # 8 updates/epoch, 5 epochs: the ends of epochs 2 and 4 (16, 32) and of the run (40); every 12
    # updates: 12 and 36 mid-epoch, 24 at the end of epoch 3, which is not an every-2-epochs end
    train(compose_config("schedule=cosine", "trainer.max_epochs=5", "trainer.checkpoint_every_n_epochs=2",
                         "trainer.checkpoint_every_n_steps=12", "trainer.keep_last_n=10",
                         "trainer.val_every_n_epochs=5"), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == [
        f"step-{u:08d}.pt" for u in (12, 16, 24, 32, 36, 40)
    ]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_checkpoint_from_another_device_keeps_this_runs_optimizer_kernels_and_scales(name):
    """torch restores each group's fused/foreach flags from the checkpoint: a GPU run's state (fused)
    resumed on the CPU, or a CPU run's (foreach) resumed on a GPU, must step with this run's kernels
    (a fused optimizer takes the GradScaler's skip flag; foreach refuses it)."""
    def make(lr_scale, **kernels):
        groups = [{"params": [torch.nn.Parameter(torch.ones(3))], "param_names": ["w"], "lr_scale": lr_scale}]
        if name == "sgd":
            return torch.optim.SGD(groups, lr=0.1, momentum=0.9, **kernels)
        return torch.optim.AdamW(groups, lr=0.1, **kernels)

    fused = make(0.5, fused=True)  # as build_optimizer makes it on CUDA (CPU kernels exist for both)
    fused.param_groups[0]["params"][0].grad = torch.ones(3)
    fused.step()
    here = make(1.0, foreach=True)  # as build_optimizer makes it on the CPU
    load_optimizer_state(here, optimizer_state(fused))
    assert (here.param_groups[0]["fused"], here.param_groups[0]["foreach"]) == (None, True)
    assert here.param_groups[0]["lr_scale"] == 1.0  # scales come from this run's config (optimizer.lr_scales)
    assert here.state_dict()["state"][0].keys() == fused.state_dict()["state"][0].keys()  # the state itself came over


@pytest.mark.parametrize(("change", "key"), [
    ("seed=1", "seed"),
    ("data.noise=0.3", "data.noise"),
    ("model.dropout=0.2", "model.dropout"),
    ("trainer.clip_grad_norm=0.5", "trainer.clip_grad_norm"),
    ("trainer.label_smoothing=0.1", "trainer.label_smoothing"),
    ("loss._target_=torch.nn.MultiMarginLoss", "loss._target_"),
])
def test_a_resume_that_would_splice_two_runs_is_one_line_unless_accepted(train_cli, change, key):
    """Through the real CLI: each change that alters what an update computes is refused before
    anything is written, naming the key, and taken when trainer.resume_accept names it."""
    run = ["schedule=cosine", "schedule.total_steps=16", "trainer.max_epochs=1"]
    train_cli(*run)
    proc, run_dir = train_cli(*run, "trainer.max_epochs=2", "trainer.resume=auto", change, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: trainer.resume_accept: ") and f"({key}: " in proc.stderr
    assert f"trainer.resume_accept=[{key}]" in proc.stderr
    assert load_checkpoint(run_dir / "last.pt")["update"] == 8  # nothing trained, nothing written
    train_cli(*run, "trainer.max_epochs=2", "trainer.resume=auto", change, f"trainer.resume_accept=[{key}]")
    assert load_checkpoint(run_dir / "last.pt")["update"] == 16


def test_what_does_not_change_an_update_resumes_freely(train_cli):
    run = ["schedule=cosine", "schedule.total_steps=16", "trainer.max_epochs=1"]
    train_cli(*run, "data.batch_size=32")
    # Another micro-batch with the same global batch, another loader, a new label, more logging.
    train_cli(*run, "trainer.max_epochs=2", "trainer.resume=auto", "data.batch_size=16", "trainer.global_batch_size=32",
              "data.loader=dataloader", "data.num_workers=0", "data.name=blobs", "logger.log_every_n_steps=3")
