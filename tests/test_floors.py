"""Floors that cannot climb: ``schedule.min_lr_ratio`` sets the floor relative to η, and a floor
above η is refused in one line by the CLI, the preview and ``trainer.lr_scheduler`` alike (before:
``schedule=warmup_cosine optimizer.lr=1e-6`` "decayed" up to its default floor 1e-5, 10× the peak)."""

from __future__ import annotations

import pytest
import torch

import trainer
from tests.conftest import TINY, run_cli
from tests.test_bad_input import assert_one_line_error
from tests.test_schedules import seed000_get_lr
from trainer.errors import ConfigError
from trainer.schedules.curve import read_lr_csv


@pytest.mark.parametrize("module", ["trainer", "trainer.preview"])
@pytest.mark.parametrize(("overrides", "key", "text"), [
    (["schedule=warmup_cosine", "optimizer.lr=1e-6"], "schedule.min_lr", "1e-05 is above the peak LR η=1e-06"),
    (["schedule=cosine", "schedule.min_lr=5"], "schedule.min_lr", "5 is above the peak LR η=0.001"),
    (["schedule=nanogpt", "schedule.phases.0.steps=4", "optimizer.lr=1e-5"], "schedule.phases.1.min_lr", "0.0001 is above the peak LR η=1e-05"),
    (["schedule=constant", "schedule.min_lr_ratio=0.1"], "schedule.min_lr_ratio", "'constant' has no floor"),
    (["schedule=chain", "schedule.min_lr_ratio=0.1"], "schedule.min_lr_ratio", "its phases set theirs"),
    (["schedule=cosine", "schedule.min_lr_ratio=2"], "schedule.min_lr_ratio", "got 2"),
])
def test_a_floor_that_would_climb_is_one_line(tmp_path, module, overrides, key, text):
    run_dir = tmp_path / "run"
    proc = run_cli(module, [*TINY, *overrides, f"hydra.run.dir={run_dir}"], check=False)
    assert_one_line_error(proc, key)
    assert text in proc.stderr
    assert not run_dir.exists()


def test_min_lr_ratio_is_the_floor_as_a_fraction_of_the_peak(tmp_path):
    """Seed 000's cosine with min_lr = 0.1 × η, whatever η is: the same curve scaled."""
    for lr in (0.01, 0.04):
        out = tmp_path / str(lr)
        run_cli("trainer.preview", [*TINY, "schedule=warmup_cosine", "schedule.warmup_steps=4", f"optimizer.lr={lr}",
                                    "schedule.min_lr_ratio=0.1", "trainer.max_steps=40", f"hydra.run.dir={out}"])
        rows = read_lr_csv(out / "lr.csv")
        expected = [seed000_get_lr(t, 4, 40, lr, 0.1 * lr) for t in range(40)]
        assert [r["lr/decay"] for r in rows] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_lr_scheduler_takes_the_ratio_and_refuses_a_climbing_floor():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    scheduler = trainer.lr_scheduler(optimizer, "cosine", total_steps=10, min_lr_ratio=0.25)
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.02) and lrs[10] == pytest.approx(0.005)  # the floor: 0.25 × η
    with pytest.raises(ConfigError) as refused:
        trainer.lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6), "warmup_cosine",
                             total_steps=10)
    assert refused.value.key == "schedule.min_lr" and "above the peak LR" in str(refused.value)
