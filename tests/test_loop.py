"""The step order: the LR an update uses, accumulation, clipping, loss scaling, plateau."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tests.conftest import compose_config
from trainer.app.run import train
from trainer.controls import Controls
from trainer.optim.factory import build_optimizer
from trainer.rundir.events import read_scalars
from trainer.schedules.registry import build_schedule
from trainer.schedules.schedule import apply_schedule
from trainer.training.precision import resolve_precision
from trainer.training.step import TrainStep

CPU = torch.device("cpu")


def record_step_lrs(optimizer):
    """Wrap optimizer.step to record the LR of group 0 at the moment each step runs."""
    seen, original = [], optimizer.step

    def step(*args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)

    optimizer.step = step
    return seen


def make_step(model, optimizer, schedule, clip=None, controls=()):
    return TrainStep(model, optimizer, schedule, resolve_precision("fp32", CPU), nn.CrossEntropyLoss(), clip,
                     controls=Controls(list(controls)))


def linear_setup(lr=0.1, total=10, name="linear", warmup_steps=0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt_cfg = OmegaConf.create({"name": "sgd", "_target_": "torch.optim.SGD", "lr": lr, "weight_decay": 0.0,
                                "momentum": 0.0, "nesterov": False, "no_decay_bias_and_norm": True})
    optimizer = build_optimizer(opt_cfg, model, CPU)
    sched_cfg = OmegaConf.create({"name": name, "interval": "step", "warmup_steps": warmup_steps,
                                  "min_lr": 0.0})
    schedule = build_schedule(sched_cfg, peak_lr=lr, total_steps=total, updates_per_epoch=total)
    return model, optimizer, schedule


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_update_t_steps_with_the_schedule_lr_at_t():
    model, optimizer, schedule = linear_setup()
    seen = record_step_lrs(optimizer)
    step = make_step(model, optimizer, schedule)
    apply_schedule(optimizer, schedule, 0)
    for update in range(10):
        step([batch(seed=update)], update)
    assert seen == pytest.approx([0.1 * (1 - t / 10) for t in range(10)])


def test_accumulated_micro_batches_equal_one_big_batch_and_one_schedule_step():
    model, optimizer, schedule = linear_setup()
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    seen = record_step_lrs(optimizer)
    apply_schedule(optimizer, schedule, 0)
    x, y = batch(16)
    make_step(model, optimizer, schedule)([(x[:8], y[:8]), (x[8:], y[8:])], 0)
    nn.CrossEntropyLoss()(twin(x), y).backward()
    twin_opt.step()
    assert seen == [0.1]  # one optimizer step for two micro-batches
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9)  # the schedule moved once
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_clipping_logs_the_pre_clip_norm_and_steps_with_the_clipped_one():
    model, optimizer, schedule = linear_setup(lr=1.0)
    with torch.no_grad():
        model[0].weight.mul_(50)  # large logits -> a gradient norm well above 0.5
    x, y = batch()
    probe = copy.deepcopy(model)
    nn.CrossEntropyLoss()(probe(x), y).backward()
    true_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in probe.parameters()]))
    assert true_norm > 0.5
    grads_at_step = []
    original = optimizer.step

    def step(*a, **k):
        grads_at_step.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        return original(*a, **k)

    optimizer.step = step
    apply_schedule(optimizer, schedule, 0)
    _, norm = make_step(model, optimizer, schedule, clip=0.5)([(x, y)], 0)
    assert norm.item() == pytest.approx(true_norm.item(), rel=1e-5)
    assert grads_at_step[0].item() == pytest.approx(0.5, rel=1e-4)


def test_loss_scaling_unscales_before_clipping_and_logging():
    """With a GradScaler (fp16's path) the logged norm and the update match the unscaled run."""
    model, optimizer, schedule = linear_setup(lr=1.0)
    twin, twin_opt, twin_schedule = linear_setup(lr=1.0)
    x, y = batch()
    scaled = make_step(model, optimizer, schedule, clip=0.05)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    plain = make_step(twin, twin_opt, twin_schedule, clip=0.05)
    apply_schedule(optimizer, schedule, 0)
    apply_schedule(twin_opt, twin_schedule, 0)
    _, norm_scaled = scaled([(x, y)], 0)
    _, norm_plain = plain([(x, y)], 0)
    assert norm_scaled.item() == pytest.approx(norm_plain.item(), rel=1e-5)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_grad_norm_is_measured_without_clipping_and_nothing_is_clipped():
    model, optimizer, schedule = linear_setup(lr=1.0)
    probe = copy.deepcopy(model)
    x, y = batch()
    nn.CrossEntropyLoss()(probe(x), y).backward()
    apply_schedule(optimizer, schedule, 0)
    _, norm = make_step(model, optimizer, schedule, clip=None)([(x, y)], 0)
    true_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in probe.parameters()]))
    assert norm.item() == pytest.approx(true_norm.item(), rel=1e-5)
    with torch.no_grad():  # plain SGD at LR 1.0: the step moved each weight by exactly its gradient
        for p, q in zip(model.parameters(), probe.parameters()):
            torch.testing.assert_close(p, q - q.grad)


def test_first_warmup_update_runs_at_lr_zero_and_moves_nothing():
    model, optimizer, schedule = linear_setup(name="warmup_cosine", warmup_steps=4)
    before = [p.detach().clone() for p in model.parameters()]
    seen = record_step_lrs(optimizer)
    apply_schedule(optimizer, schedule, 0)
    step = make_step(model, optimizer, schedule)
    step([batch()], 0)
    assert seen == [0.0]
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    step([batch()], 1)
    assert seen == [0.0, 0.025]
    assert not torch.equal(next(model.parameters()), before[0])


def test_plateau_cuts_the_lr_from_the_next_update(tmp_path):
    # The synthetic task is easy, so a huge threshold makes every validation count as a stall.
    cfg = compose_config(
        "schedule=plateau", "schedule.patience=0", "schedule.threshold=0.9", "schedule.factor=0.5",
        "trainer.max_epochs=4",
    )
    train(cfg, tmp_path / "run")
    lrs = dict(read_scalars(tmp_path / "run")["train/lr"])
    lr = cfg.optimizer.lr
    # 8 updates/epoch. Epoch 0 sets `best`; each later validation is a stall -> halve.
    assert lrs[0] == pytest.approx(lr) and lrs[7] == pytest.approx(lr)
    assert lrs[8] == pytest.approx(lr) and lrs[16] == pytest.approx(lr / 2) and lrs[24] == pytest.approx(lr / 4)


def test_adamw_weight_decay_follows_the_scheduled_lr():
    """Seed 000: AdamW's decay term is multiplied by η, so when the schedule lowers η the decay
    weakens with it. With zero gradients Adam's step is 0 and each update is exactly
    p ← p·(1 − lr_t·weight_decay) in the decay group, and nothing in the no_decay group."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt_cfg = OmegaConf.create({"name": "adamw", "_target_": "torch.optim.AdamW", "lr": 0.1, "weight_decay": 0.5,
                                "betas": [0.9, 0.999], "eps": 1e-8, "no_decay_bias_and_norm": True})
    optimizer = build_optimizer(opt_cfg, model, CPU)
    sched_cfg = OmegaConf.create({"name": "cosine", "interval": "step", "warmup_steps": 0, "min_lr": 0.0})
    schedule = build_schedule(sched_cfg, peak_lr=0.1, total_steps=4, updates_per_epoch=4)

    def zero_loss(logits, targets):  # finite, and every gradient is 0
        return logits.sum() * 0.0

    step = TrainStep(model, optimizer, schedule, resolve_precision("fp32", CPU), zero_loss, None)
    apply_schedule(optimizer, schedule, 0)
    weight, bias = model[0].weight, model[0].bias
    for update, lr in enumerate([0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.1 * (1 - 2**-0.5) / 2]):  # cos to 0 over 4
        before_w, before_b = weight.detach().clone(), bias.detach().clone()
        step([batch()], update)
        assert torch.allclose(weight, before_w * (1 - lr * 0.5), rtol=1e-6, atol=0)
        assert torch.equal(bias, before_b)
