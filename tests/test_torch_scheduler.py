"""trainer.lr_scheduler: our schedules in a plain PyTorch loop, checked against the seeds' tables
and torch's own OneCycleLR, and resumed through state_dict.

Each loop calls ``scheduler.step()`` after ``optimizer.step()``, as torch documents; the LR an
update used is read from the optimizer just before its step.
"""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
import torch

import trainer
from tests.conftest import REPO
from tests.test_schedules import assert_seq_close, seed000_get_lr
from trainer.errors import ConfigError


def tiny_optimizer(kind="adamw", lr=3e-4, second_group_lr=None):
    """Two one-parameter groups (the second at ``second_group_lr``, default lr/10)."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    groups = [{"params": [a]}, {"params": [b], "lr": second_group_lr or lr / 10}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)


def plain_loop(optimizer, scheduler, updates):
    """The LRs and momenta of updates 0..updates-1, and the parameters after them."""
    lrs, momenta = [], []
    for _ in range(updates):
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.full_like(p, 0.5)
        group = optimizer.param_groups[0]
        lrs.append([g["lr"] for g in optimizer.param_groups])
        momenta.append(group["betas"][0] if "betas" in group else group["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs, momenta


def test_returns_a_torch_lr_scheduler():
    optimizer = tiny_optimizer()
    scheduler = trainer.lr_scheduler(optimizer, "cosine", total_steps=10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)


def test_seed000_warmup_cosine_table_through_a_plain_loop():
    optimizer = tiny_optimizer(lr=3e-4)
    scheduler = trainer.lr_scheduler(optimizer, "warmup_cosine", total_steps=5000, warmup_steps=200, min_lr=1e-5)
    lrs, _ = plain_loop(optimizer, scheduler, 5001)
    first = [row[0] for row in lrs]
    assert first[0] == 0.0 and math.isclose(first[100], 1.5e-4) and math.isclose(first[200], 3e-4)
    assert math.isclose(first[5000], 1e-5)
    assert_seq_close(first, [seed000_get_lr(t, 200, 5000, 3e-4, 1e-5) for t in range(5001)])
    # The second group keeps its initial ratio (1/10) to the first at every update.
    assert_seq_close([row[1] for row in lrs], [lr / 10 for lr in first])


def test_seed000_step_decay_and_cosine_tables_through_a_plain_loop():
    optimizer = tiny_optimizer("sgd", lr=0.1)
    lrs, _ = plain_loop(optimizer, trainer.lr_scheduler(optimizer, "step", total_steps=90), 90)
    # "Epoch 1-30: 0.1, 31-60: 0.01, 61-90: 0.001": the declared defaults step_size=30, gamma=0.1
    assert_seq_close([row[0] for row in lrs], [0.1] * 30 + [0.01] * 30 + [0.001] * 30)
    optimizer = tiny_optimizer(lr=1e-3)
    lrs, _ = plain_loop(optimizer, trainer.lr_scheduler(optimizer, "cosine", total_steps=1000, min_lr=1e-5), 1001)
    assert_seq_close([lrs[t][0] for t in (0, 500, 1000)], [1e-3, (1e-3 + 1e-5) / 2, 1e-5])


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_onecycle_moves_lr_and_momentum_as_torch_onecyclelr(kind):
    ours_opt = tiny_optimizer(kind, lr=0.1, second_group_lr=0.1)
    ours = plain_loop(ours_opt, trainer.lr_scheduler(ours_opt, "onecycle", total_steps=100), 100)
    torch_opt = tiny_optimizer(kind, lr=0.1, second_group_lr=0.1)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torch_opt, max_lr=0.1, total_steps=100, pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
        base_momentum=0.85, max_momentum=0.95,
    )
    theirs = plain_loop(torch_opt, reference, 100)
    assert_seq_close([row[0] for row in ours[0]], [row[0] for row in theirs[0]], rel=1e-9)
    assert_seq_close(ours[1], theirs[1], rel=1e-9)


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_resumes_the_same_lrs_and_parameters():
    def build():
        torch.manual_seed(0)
        optimizer = tiny_optimizer(lr=1e-2)
        return optimizer, trainer.lr_scheduler(optimizer, "warmup_cosine", total_steps=30, warmup_steps=5)

    optimizer, scheduler = build()
    whole, _ = plain_loop(optimizer, scheduler, 30)
    final = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]

    optimizer, scheduler = build()
    first, _ = plain_loop(optimizer, scheduler, 12)
    params = [p.detach() for g in optimizer.param_groups for p in g["params"]]
    saved = _roundtrip({"params": params, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    optimizer, scheduler = build()  # a fresh process would rebuild the model, optimizer and scheduler, then load
    with torch.no_grad():
        for p, value in zip((p for g in optimizer.param_groups for p in g["params"]), saved["params"]):
            p.copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rest, _ = plain_loop(optimizer, scheduler, 18)
    assert first + rest == whole
    resumed = [p.detach() for g in optimizer.param_groups for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(resumed, final))


def test_state_of_another_schedule_is_refused():
    optimizer = tiny_optimizer()
    state = trainer.lr_scheduler(optimizer, "cosine", total_steps=30).state_dict()
    other = trainer.lr_scheduler(tiny_optimizer(), "cosine", total_steps=40)
    with pytest.raises(ValueError, match="total_steps"):
        other.load_state_dict(state)


def test_plateau_is_refused_for_torch_reduce_lr_on_plateau():
    with pytest.raises(ConfigError, match=r"ReduceLROnPlateau\(optimizer, mode='min', factor=0.1, patience=5"):
        trainer.lr_scheduler(tiny_optimizer(), "plateau", total_steps=10)


@pytest.mark.parametrize(
    ("name", "params", "key", "text"),
    [
        ("nonexistent", {}, "schedule", "unknown schedule 'nonexistent'; known: chain, constant"),
        ("cosine", {"min_Lr": 0.1}, "schedule.min_Lr", "did you mean min_lr?"),
        ("onecycle", {"base_momentum": 1.5}, "schedule.base_momentum", "got 1.5"),
        ("exponential", {"gamma": 10}, "schedule.gamma", "got 10"),
        ("onecycle", {"pct_start": 0.01}, "schedule.pct_start", "of 100 updates"),
        ("inverse_sqrt", {"warmup_steps": 0}, "schedule.warmup_steps", "warmup_steps >= 1"),
        ("cosine", {"total_steps_": 3}, "schedule.total_steps_", "not a parameter"),
    ],
)
def test_bad_arguments_are_one_config_error_naming_the_key(name, params, key, text):
    with pytest.raises(ConfigError) as error:
        trainer.lr_scheduler(tiny_optimizer(), name, total_steps=100, **params)
    assert error.value.key == key and text in str(error.value)


def test_import_trainer_stays_light():
    code = "import sys, trainer; assert 'torch' not in sys.modules, 'torch'; print(callable(trainer.lr_scheduler))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
