"""The real ``python -m trainer`` command: what it logs, and how it refuses bad input."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_config, run_cli
from trainer.rundir.events import read_scalars
from trainer.schedules.curve import read_lr_csv


def seed000_get_lr(step: int, warmup_steps: int, total_steps: int, lr_max: float, lr_min: float) -> float:
    """Seed 000's get_lr, as printed in the article."""
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * progress))


def values(scalars, tag):
    return [v for _, v in scalars[tag]]


def test_per_step_lr_in_tensorboard_is_seed000_formula(train_cli):
    # 8 updates/epoch x 4 epochs = 32 updates; warmup 5, cosine to 1e-4.
    proc, run_dir = train_cli(
        "schedule=warmup_cosine", "schedule.warmup_steps=5", "schedule.min_lr=1e-4",
        "optimizer.lr=0.01", "trainer.max_epochs=4",
    )
    scalars = read_scalars(run_dir)
    steps = [s for s, _ in scalars["train/lr"]]
    assert steps == list(range(32))
    expected = [seed000_get_lr(t, 5, 32, 0.01, 1e-4) for t in range(32)]
    assert values(scalars, "train/lr") == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert values(scalars, "train/lr")[0] == 0.0  # update 0 runs at LR 0 (seed 000's convention)
    # two parameter groups (decay / no_decay) at the same LR all run long: train/lr is both, and
    # TensorBoard shows one LR chart, not three identical ones (per-group charts: test_optim)
    assert not [tag for tag in scalars if tag.startswith("train/lr/")]
    assert {"train/loss", "train/grad_norm", "train/epoch", "val/loss", "val/acc"} <= set(scalars)
    # The run's own lr.csv (written at its start, from the schedule) has every update's exact LR.
    rows = read_lr_csv(run_dir / "lr.csv")
    assert [r["update"] for r in rows] == list(range(32))
    assert [r["lr/decay"] for r in rows] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert (run_dir / "lr.png").read_bytes()[:4] == b"\x89PNG"
    # The console's last lines: where the run went and how it did, over its 4 validations.
    summary = proc.stdout.splitlines()[-4:]
    wall_time = json.loads((run_dir / "metrics.json").read_text())["wall_time_s"]
    assert summary[0] == f"run completed: 32 updates in {wall_time:.1f} s, in {run_dir}"
    for line, (tag, best) in zip(summary[1:3], [("val/loss", min), ("val/acc", max)]):
        points = scalars[tag]
        step, value = best(points, key=lambda p: p[1])
        assert line == f"  {tag:<9} final {points[-1][1]:.4f}  best {value:.4f} (after {step} updates)"
    assert summary[3] == f"  tensorboard --logdir {run_dir}"
    assert [s for s, _ in scalars["val/loss"]] == [8, 16, 24, 32]  # after each epoch's updates
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.schedule.total_steps == 32 and saved.schedule.warmup_steps == 5


def test_per_epoch_schedule_changes_only_at_epoch_boundaries(train_cli):
    _, run_dir = train_cli(
        "schedule=step", "schedule.interval=epoch", "schedule.step_size=2", "schedule.gamma=0.5",
        "optimizer=sgd", "optimizer.lr=0.1", "trainer.max_epochs=5",
    )
    lrs = values(read_scalars(run_dir), "train/lr")
    assert len(lrs) == 40
    expected = [0.1 * 0.5 ** ((u // 8) // 2) for u in range(40)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_warmup_from_zero_false_skips_the_zero_lr_update(train_cli):
    _, run_dir = train_cli(
        "schedule=warmup_cosine", "schedule.warmup_steps=4", "schedule.warmup_from_zero=false",
        "schedule.min_lr=0", "optimizer.lr=0.02", "trainer.max_steps=12",
    )
    lrs = values(read_scalars(run_dir), "train/lr")
    assert lrs[:4] == pytest.approx([0.005, 0.01, 0.015, 0.02])  # (t+1)/W, seed 003
    assert lrs[4] == pytest.approx(0.02)  # cosine starts at the peak at t = W


def test_sqrt_batch_rule_scales_the_lr_the_optimizer_uses(train_cli):
    # 32 examples per update against a reference batch of 8: every LR times sqrt(4) = 2.
    _, run_dir = train_cli(
        "schedule=linear", "optimizer.lr=0.01", "optimizer.lr_scaling=sqrt", "optimizer.reference_batch_size=8",
        "trainer.max_epochs=2",
    )
    assert values(read_scalars(run_dir), "train/lr") == pytest.approx([0.02 * (1 - t / 16) for t in range(16)])


def test_accumulation_advances_the_schedule_once_per_update(train_cli):
    # 8 batches/epoch with 4 micro-batches per update -> 2 updates/epoch; 3 epochs -> 6 updates.
    _, run_dir = train_cli(
        "schedule=linear", "optimizer.lr=0.06", "trainer.accumulate_grad_batches=4", "trainer.max_epochs=3",
    )
    scalars = read_scalars(run_dir)
    assert [s for s, _ in scalars["train/lr"]] == list(range(6))
    assert values(scalars, "train/lr") == pytest.approx([0.06 * (1 - t / 6) for t in range(6)])
    assert [s for s, _ in scalars["val/loss"]] == [2, 4, 6]


def test_onecycle_logs_momentum_and_log_every_n_steps(train_cli):
    _, run_dir = train_cli(
        "schedule=onecycle", "optimizer=sgd", "optimizer.lr=0.1", "trainer.max_steps=20",
        "logger.log_every_n_steps=5",
    )
    scalars = read_scalars(run_dir)
    assert [s for s, _ in scalars["train/lr"]] == [0, 5, 10, 15, 19]  # every 5th and the last
    momentum = dict(scalars["train/momentum"])
    assert momentum[0] == pytest.approx(0.95) and momentum[5] == pytest.approx(0.85)  # peak LR at 6 -> near base


def test_lr_range_test_stops_at_num_steps(train_cli):
    _, run_dir = train_cli(
        "schedule=lr_range_test", "schedule.min_lr=1e-5", "schedule.max_lr=1.0", "schedule.num_steps=11",
        "trainer.max_epochs=10", "logger.log_every_n_steps=50",
    )
    scalars = read_scalars(run_dir)
    assert values(scalars, "train/lr") == pytest.approx([1e-5 * (1e5) ** (t / 10) for t in range(11)], rel=1e-6)
    assert len(scalars["train/loss"]) == 11  # the loss of every LR is recorded


def test_help_and_cfg_job():
    help_text = run_cli("trainer", ["--help"]).stdout
    assert "schedule: " in help_text and "warmup_cosine" in help_text
    job = OmegaConf.create(run_cli("trainer", ["--cfg", "job", "schedule=cosine"]).stdout)
    assert job.schedule.name == "cosine" and job.schedule.interval == "step"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["schedule=nope"], "schedule"),
        (["trainer.nope=1"], "trainer.nope"),
        (["schedule=warmup_cosine", "schedule.warmup_steps=1000"], "schedule.warmup_steps"),
        (["optimizer.lr=-0.1"], "optimizer.lr"),
        (["schedule=multistep", "schedule.milestones=[5,3]"], "schedule.milestones"),
        (["trainer.precision=fp16", "trainer.device=cpu"], "trainer.precision"),
        (["schedule=cosine", "+schedule.gamma=0.5"], "schedule.gamma"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, overrides, key):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", *overrides], check=False)
    assert proc.returncode != 0
    assert key in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists()


def test_a_short_run_works_with_the_default_schedule(train_cli):
    """The first thing people try: the default warmup_cosine over 30 updates warms up for
    round(30 / 14) = 2 of them (the default job's 1404 updates keep their 100)."""
    proc, run_dir = train_cli("trainer.max_steps=30")
    rows = read_lr_csv(run_dir / "lr.csv")
    eta, floor, warmup, total = 1e-3, 1e-5, 2, 30
    expected = [eta * t / warmup if t < warmup else
                floor + 0.5 * (eta - floor) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) for t in range(30)]
    assert [r["lr/decay"] for r in rows] == pytest.approx(expected, rel=1e-12)
    assert OmegaConf.load(run_dir / "config.yaml").schedule.warmup_steps == 2


def test_the_default_job_keeps_its_100_warmup_updates():
    from trainer.app.build import build_for_preview

    _, _, plan = build_for_preview(compose_config(base=[]))  # python -m trainer, nothing overridden
    assert (plan.total_steps, plan.warmup_steps) == (1404, 100)


def test_preview_writes_csv_and_png(tmp_path):
    out = tmp_path / "preview"
    proc = run_cli(
        "trainer.preview",
        [*TINY, f"hydra.run.dir={out}", "schedule=warmup_cosine", "schedule.warmup_steps=4",
         "optimizer.lr=0.01", "schedule.min_lr=0.0", "trainer.max_steps=16"],
    )
    rows = (out / "lr.csv").read_text().splitlines()
    assert rows[0] == "update,t,lr/decay,lr/no_decay"
    assert len(rows) == 17
    update4 = rows[5].split(",")
    assert float(update4[2]) == pytest.approx(0.01)
    assert (out / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert "peak=0.01" in proc.stdout


def test_a_transformer_without_warmup_is_warned_once_on_stderr(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be, that is the question\n" * 50)
    args = ["model=gpt", "data=shakespeare_char", f"data.path={text}", "data.batch_size=4", "model.block_size=16",
            "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "schedule=cosine", "trainer.max_steps=4",
            "logger.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    first = run_cli("trainer", args)
    assert first.stderr.count("warning: schedule.warmup_steps: model=gpt trains with AdamW") == 1
    again = run_cli("trainer", [*args, "trainer.resume=auto"])  # a resume was warned when it started
    assert "warning:" not in again.stderr


def test_help_names_the_app_its_tools_readme_and_completion():
    proc = run_cli("trainer", ["--help"])
    header = proc.stdout.split("== Configuration groups ==")[0]
    assert header.startswith("trainer: ") and "__main__" not in proc.stdout
    for named in ("python -m trainer.preview", "python -m trainer.compare", "python -m trainer.sample", "README.md", "docs/reference/keys.md",
                  'eval "$(trainer -sc install=bash)"'):
        assert named in header, named
    assert "schedule: chain, constant, cosine" in proc.stdout  # Hydra's own listing follows
