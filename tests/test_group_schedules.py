"""Per-group schedules (``optimizer.param_groups[].schedule``) and the weight-decay schedule
(``optimizer.weight_decay_schedule``): every update's LR and weight decay of every group against
the formulas, in ``lr.csv``, the TensorBoard logs, the optimizer itself, the preview, the Python
scheduler and a resumed run; and the refusals, one line each.

The tiny job's MLP has two groups: ``decay`` (its weight matrices) and ``no_decay/*.bias`` (its
biases, which the rule ``{match: '*.bias', ...}`` below takes).
"""

from __future__ import annotations

import math

import pytest
import torch

import trainer
from tests.conftest import TINY, compose_config, run_cli
from tests.test_resume import straight_and_resumed
from trainer.app.build import build_optimization
from trainer.app.run import train
from trainer.errors import ConfigError
from trainer.rundir.events import read_scalars
from trainer.schedules.curve import read_lr_csv
from trainer.schedules.schedule import apply_schedule

ETA, LAMBDA, T, W, D = 0.01, 0.1, 20, 4, 8  # peak LR, weight decay, updates, warmup, WSD's decay
BIAS = "no_decay/*.bias"


def wsd(t: int) -> float:
    """WSD with a linear warmup over W, η held, then linear to 0 over the last D of T."""
    if t < W:
        return ETA * t / W
    return ETA if t < T - D else ETA * (1 - (t - (T - D)) / D)


def constant(t: int) -> float:
    """constant, taking the run's warmup W (nothing in the rule overrides it)."""
    return ETA * min(t / W, 1.0)


RUN = ["schedule=wsd", f"schedule.warmup_steps={W}", f"schedule.decay_steps={D}", f"optimizer.lr={ETA}",
       f"optimizer.weight_decay={LAMBDA}", f"trainer.max_steps={T}"]
BIAS_CONSTANT = "optimizer.param_groups=[{match: '*.bias', lr_scale: 0.5, schedule: constant}]"


def expected_columns() -> dict[str, list[float]]:
    """Every lr.csv column of RUN + BIAS_CONSTANT + ``optimizer.weight_decay_schedule=lr``, from the
    formulas: the weight decay is λ × each group's own LR shape, and the biases do not decay."""
    return {"lr/decay": [wsd(t) for t in range(T)], f"lr/{BIAS}": [0.5 * constant(t) for t in range(T)],
            "wd/decay": [LAMBDA * wsd(t) / ETA for t in range(T)], f"wd/{BIAS}": [0.0] * T}


def test_each_group_follows_its_own_schedule_and_the_weight_decay_its_lr_in_a_real_run(train_cli):
    proc, run_dir = train_cli(*RUN, BIAS_CONSTANT, "optimizer.weight_decay_schedule=lr")
    rows = read_lr_csv(run_dir / "lr.csv")
    assert [r["update"] for r in rows] == list(range(T))
    for column, values in expected_columns().items():
        assert [r[column] for r in rows] == pytest.approx(values, rel=1e-12, abs=1e-15), column
    # TensorBoard holds what the optimizer's groups had just before each step (float32 there).
    scalars = read_scalars(run_dir)
    for column, values in expected_columns().items():
        tag = f"train/{column}"
        assert [s for s, _ in scalars[tag]] == list(range(T)), tag
        assert [v for _, v in scalars[tag]] == pytest.approx(values, rel=1e-6, abs=1e-12), tag
    assert [v for _, v in scalars["train/wd"]] == [v for _, v in scalars["train/wd/decay"]]  # group 0's


def test_without_a_weight_decay_schedule_lr_csv_and_the_logs_have_no_weight_decay(tmp_path):
    train(compose_config(*RUN, BIAS_CONSTANT, "trainer.max_steps=6", f"schedule.total_steps={T}"), tmp_path)
    assert not [k for k in read_lr_csv(tmp_path / "lr.csv")[0] if k.startswith("wd/")]
    assert not [tag for tag in read_scalars(tmp_path) if tag.startswith("train/wd")]


def test_one_weight_decay_curve_is_logged_as_train_wd_alone(tmp_path):
    """One group (no no-decay split): its λ follows a cosine of its own, logged once as train/wd."""
    train(compose_config(*RUN, "optimizer.no_decay_bias_and_norm=false", "trainer.max_steps=8", f"schedule.total_steps={T}",
                         "optimizer.weight_decay_schedule={name: cosine, min_lr_ratio: 0.1, warmup_steps: 0}"), tmp_path)
    scalars = read_scalars(tmp_path)
    assert not [tag for tag in scalars if tag.startswith("train/wd/")]
    # cosine over the run's T from λ down to λ/10 (min_lr = 0.1 η): λ(0.1 + 0.45(1 + cos(πt/T)))
    expected = [LAMBDA * (0.1 + 0.45 * (1 + math.cos(math.pi * t / T))) for t in range(8)]
    assert [v for _, v in scalars["train/wd"]] == pytest.approx(expected, rel=1e-6)
    assert [r["wd/all"] for r in read_lr_csv(tmp_path / "lr.csv")] == pytest.approx(expected, rel=1e-12)


def test_the_optimizer_steps_with_the_scheduled_lr_and_weight_decay():
    """torch's AdamW with a zero gradient only decays: p ← p(1 − lr·λ) with the LR and λ the
    schedule set for that update (Adam's own step is 0/(0 + eps) = 0)."""
    cfg = compose_config(*RUN, BIAS_CONSTANT, "optimizer.weight_decay_schedule=lr")
    built = build_optimization(cfg, num_train=256, input_shape=(32,), num_classes=10, device=torch.device("cpu"))
    optimizer, schedule = built.optimizer, built.schedule
    decayed = optimizer.param_groups[0]
    assert decayed["name"] == "decay"
    for update in (2, 8, 15):
        apply_schedule(optimizer, schedule, update)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
            [wsd(update), 0.5 * constant(update)], rel=1e-12)
        before = [p.detach().clone() for p in decayed["params"]]
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        shrink = 1 - wsd(update) * LAMBDA * wsd(update) / ETA
        for old, new in zip(before, decayed["params"]):
            torch.testing.assert_close(new.detach(), old * shrink, rtol=1e-6, atol=0)


def test_a_group_schedule_with_its_own_keys_and_a_chain(tmp_path):
    """A mapping overrides the run's warmup; a chain takes none of it (it warms up in a phase)."""
    rules = ("optimizer.param_groups=[{match: '1.bias', schedule: {name: cosine, warmup_steps: 0, min_lr: 0.0}}, "
             "{match: '*.bias', schedule: {name: chain, phases: [{name: linear_warmup, steps: 2}, {name: constant}]}}]")
    train(compose_config(*RUN, rules, "trainer.max_steps=6", "schedule.total_steps=20"), tmp_path)
    rows = read_lr_csv(tmp_path / "lr.csv")
    assert [r["lr/no_decay/1.bias"] for r in rows] == pytest.approx(
        [ETA * 0.5 * (1 + math.cos(math.pi * t / T)) for t in range(6)], rel=1e-12)
    assert [r["lr/no_decay/*.bias"] for r in rows] == pytest.approx([0.0, ETA / 2, ETA, ETA, ETA, ETA], rel=1e-12)
    assert [r["lr/decay"] for r in rows] == pytest.approx([wsd(t) for t in range(6)], rel=1e-12)


def test_the_preview_writes_and_prints_every_groups_curve(tmp_path):
    out = tmp_path / "preview"
    proc = run_cli("trainer.preview", [*TINY, *RUN, BIAS_CONSTANT, "optimizer.weight_decay_schedule=lr",
                                       f"hydra.run.dir={out}"])
    rows = read_lr_csv(out / "lr.csv")
    for column, values in expected_columns().items():
        assert [r[column] for r in rows] == pytest.approx(values, rel=1e-12, abs=1e-15), column
    assert f"lr/{BIAS}: first=0 peak=0.005 (update 4) last=0.005" in proc.stdout
    assert f"wd/decay: first=0 peak=0.1 (update 4) last={LAMBDA * wsd(T - 1) / ETA:.6g}" in proc.stdout
    assert (out / "lr.png").stat().st_size > 0


def test_resume_continues_every_groups_lr_and_weight_decay_exactly(tmp_path, monkeypatch):
    overrides = [*RUN, BIAS_CONSTANT, "optimizer.weight_decay_schedule=lr", "trainer.max_steps=null",
                 "trainer.max_epochs=3", "schedule.total_steps=24", "schedule.decay_steps=10"]
    a, b = straight_and_resumed(tmp_path, monkeypatch, overrides, stop_after=11)
    assert a["update"] == b["update"] == 24
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    logs_a, logs_b = read_scalars(tmp_path / "straight"), read_scalars(tmp_path / "resumed")
    tags = [tag for tag in logs_a if tag.startswith(("train/lr", "train/wd"))]
    assert {"train/lr/decay", f"train/lr/{BIAS}", "train/wd/decay", f"train/wd/{BIAS}"} <= set(tags)
    for tag in tags:
        assert logs_a[tag] == logs_b[tag], tag


def test_a_changed_group_schedule_is_refused_on_resume(tmp_path):
    run = [*RUN, "trainer.max_steps=4", "schedule.total_steps=20"]
    train(compose_config(*run, BIAS_CONSTANT), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(compose_config(*run, "optimizer.param_groups=[{match: '*.bias', lr_scale: 0.5, schedule: cosine}]",
                             "trainer.max_steps=8", "trainer.resume=auto"), tmp_path)
    assert error.value.key == "trainer.resume_schedule" and "optimizer.param_groups" in str(error.value)


REFUSED = [
    (["optimizer.param_groups=[{match: '*.bias', schedule: nope}]"], "optimizer.param_groups.0.schedule",
     "got 'nope', not a registry schedule"),
    (["optimizer.param_groups=[{match: '*.bias', schedule: {name: wsd, decay_stepz: 3}}]"],
     "optimizer.param_groups.0.schedule.decay_stepz", "did you mean decay_steps?"),
    (["optimizer.param_groups=[{match: '*.bias', schedule: {name: cosine, interval: epoch}}]"],
     "optimizer.param_groups.0.schedule.interval", "the run's schedule.interval"),
    (["optimizer.param_groups=[{match: '*.bias', schedule: plateau}]"], "optimizer.param_groups.0.schedule",
     "plateau cuts the LR when validation stalls"),
    (["schedule=plateau", "optimizer.param_groups=[{match: '*.bias', schedule: constant}]"],
     "optimizer.param_groups.0.schedule", "the run's schedule=plateau"),
    (["optimizer.param_groups=[{match: '*.bias', schedule: onecycle}]"],
     "optimizer.param_groups.0.schedule.cycle_momentum", "momentum is one per run"),
    (["optimizer.param_groups=[{match: '*.bias', schedule: {name: wsd, decay_steps: 300}}]"],
     "optimizer.param_groups.0.schedule.decay_steps", "does not fit"),
    (["optimizer.weight_decay_schedule=foo"], "optimizer.weight_decay_schedule", "expected none, lr, a schedule"),
    (["optimizer.weight_decay_schedule={name: cosine, temperature: 2}"],
     "optimizer.weight_decay_schedule.temperature", "leave it out"),
    (["optimizer=schedule_free_adamw", "schedule=constant", "schedule.warmup_steps=0",
      "optimizer.param_groups=[{match: '*.bias', schedule: cosine}]"], "optimizer.param_groups.0.schedule",
     "schedule-free"),
]


@pytest.mark.parametrize(("overrides", "key", "text"), REFUSED, ids=[case[1] + ":" + case[2] for case in REFUSED])
def test_a_bad_group_or_weight_decay_schedule_is_one_line_exit_2_and_nothing_written(tmp_path, overrides, key, text):
    if "optimizer=schedule_free_adamw" in overrides:
        pytest.importorskip("schedulefree")
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*TINY, "trainer.max_steps=20", f"hydra.run.dir={run_dir}", *overrides], check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: ") and text in lines[0], proc.stderr
    assert not run_dir.exists()


def api_run(updates: int, saved: dict | None = None) -> tuple[list[list[float]], dict]:
    """A plain loop under ``trainer.lr_scheduler`` with a group schedule and ``weight_decay_schedule=lr``
    (continuing ``saved`` when given): each update's [LRs..., weight decays...], and the states to resume from."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": ETA / 2, "weight_decay": 0.0}],
                                  lr=ETA, weight_decay=LAMBDA)
    scheduler = trainer.lr_scheduler(optimizer, "wsd", total_steps=T, warmup_steps=W, decay_steps=D,
                                     group_schedules={1: "constant"}, weight_decay_schedule="lr")
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    seen = []
    for _ in range(updates):
        seen.append([g["lr"] for g in optimizer.param_groups] + [g["weight_decay"] for g in optimizer.param_groups])
        for p in (a, b):
            p.grad = torch.full_like(p, 0.5)
        optimizer.step()
        scheduler.step()
    return seen, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def test_the_python_scheduler_takes_group_schedules_and_a_weight_decay_schedule():
    whole, _ = api_run(T)
    expected = [[wsd(t), 0.5 * constant(t), LAMBDA * wsd(t) / ETA, 0.0] for t in range(T)]
    assert whole == [pytest.approx(row, rel=1e-12, abs=1e-15) for row in expected]
    first, saved = api_run(7)
    rest, _ = api_run(T - 7, saved)
    assert first + rest == whole
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))], lr=ETA)
    with pytest.raises(ValueError, match="build it with the same name"):
        trainer.lr_scheduler(optimizer, "wsd", total_steps=T, warmup_steps=W, decay_steps=D).load_state_dict(
            saved["scheduler"])
    with pytest.raises(ConfigError, match="group_schedules.0.cycle_momentum"):
        trainer.lr_scheduler(optimizer, "cosine", total_steps=T, group_schedules={0: "onecycle"})
    with pytest.raises(ConfigError, match="group_schedules: 5 is not a group"):
        trainer.lr_scheduler(optimizer, "cosine", total_steps=T, group_schedules={5: "constant"})
