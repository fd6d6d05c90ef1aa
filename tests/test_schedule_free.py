"""Schedule-free optimizers (``schedulefree``): the harness against the package's own loop
(``opt.train()``, steps, ``opt.eval()``), x in checkpoints and validation, exact resume, the
schedule refusal, BatchNorm recomputed at x, and the real command."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch.nn import functional as F

from tests.conftest import compose_config
from tests.test_resume import straight_and_resumed
from trainer.app.run import train
from trainer.app.validate import validate
from trainer.data import build_dataset
from trainer.errors import ConfigError
from trainer.models import build_model
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars

schedulefree = pytest.importorskip("schedulefree")

UPDATES_PER_EPOCH = 8  # TINY: 256 examples / batch 32
# No clipping (the package's loop has none), fp32, the package's defaults but a warmup.
SF = ["optimizer=schedule_free_adamw", "schedule=constant", "optimizer.lr=0.01", "optimizer.warmup_steps=5",
      "trainer.clip_grad_norm=null"]


def reference_run(cfg, optimizer_class, kwargs: dict, epochs: int, *, model=None, bn_batches: int = 0):
    """The package's own loop over the harness's data order, as its README writes it:
    ``opt.train()``, one step per batch, then ``opt.eval()``: it ends at x. With ``bn_batches``,
    BatchNorm statistics are then recomputed at x by ``torch.optim.swa_utils.update_bn`` over the
    last epoch's first batches. Returns (model, optimizer, data)."""
    data = build_dataset(cfg.data, cfg.seed)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = model or build_model(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)
    opt = optimizer_class(model.parameters(), **kwargs)
    model.train()
    opt.train()
    for epoch in range(epochs):
        batches = data.train_epoch(cfg.data.batch_size, seed=cfg.seed, epoch=epoch)
        for inputs, targets in batches:
            F.cross_entropy(model(inputs), targets).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    opt.eval()
    if bn_batches:
        torch.optim.swa_utils.update_bn([batches[i] for i in range(bn_batches)], model)
    return model, opt, data


@torch.no_grad()
def val_loss(model, data) -> float:
    """Mean cross-entropy over the whole validation split, in eval mode, in one batch."""
    model.eval()
    inputs, targets = data.val_x, data.val_y
    return F.cross_entropy(model(inputs), targets).item()


def test_the_harness_ends_where_the_packages_own_loop_ends_and_validates_x(tmp_path):
    # Validations and checkpoints at x after each epoch must not move the trajectory: the
    # reference never leaves y until the end.
    overrides = [*SF, "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=3"]
    metrics = train(compose_config(*overrides), tmp_path)
    cfg = compose_config(*overrides)
    model, opt, data = reference_run(cfg, schedulefree.AdamWScheduleFree,
                                     {"lr": 0.01, "warmup_steps": 5, "weight_decay": 0.0}, epochs=2)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["update"] == 2 * UPDATES_PER_EPOCH
    # The same operations in the same order (foreach, fp32, CPU): the same bits.
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved["model"][name], tensor), name
    # val/loss is the loss at x (summed in other batches: a float32 rounding apart, no more)
    assert metrics["val/loss"] == pytest.approx(val_loss(model, data), rel=1e-6)
    # ... and not at y, which the package's train() gives back.
    opt.train()
    at_y = val_loss(model, data)
    assert abs(at_y - metrics["val/loss"]) > 1e-4
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and name.endswith("weight"):
            assert not torch.equal(saved["model"][name], tensor), f"{name}: last.pt holds y"


def test_the_logged_lr_is_the_one_the_methods_warmup_applies(tmp_path):
    train(compose_config(*SF, "trainer.max_steps=7"), tmp_path)
    logged = [value for _, value in read_scalars(tmp_path)["train/lr"]]
    assert logged == pytest.approx([0.01 * min(1.0, (k + 1) / 5) for k in range(7)], rel=1e-6)


@pytest.mark.parametrize("stop_after", [11, 16])  # mid-epoch, and right at an epoch end
def test_a_stopped_and_resumed_run_equals_one_that_never_stopped(tmp_path, monkeypatch, stop_after):
    overrides = [*SF, "trainer.max_epochs=3", "trainer.ema_decay=0.9"]
    a, b = straight_and_resumed(tmp_path, monkeypatch, overrides, stop_after)
    assert a["update"] == b["update"] == 3 * UPDATES_PER_EPOCH
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    for saved, resumed in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]):
        assert (saved["k"], saved["weight_sum"], saved["train_mode"]) == (resumed["k"], resumed["weight_sum"], False)
    for name, tensor in a["controls"]["ema"].items():
        assert torch.equal(tensor, b["controls"]["ema"][name]), name
    assert read_scalars(tmp_path / "straight")["val/loss"] == read_scalars(tmp_path / "resumed")["val/loss"]


def test_the_ema_averages_x(tmp_path):
    """After one update the EMA is decay·x0 + (1-decay)·x1, x1 from the package's own eval()."""
    overrides = [*SF, "trainer.max_steps=1", "trainer.ema_decay=0.5"]
    train(compose_config(*overrides), tmp_path)
    cfg = compose_config(*overrides)
    data = build_dataset(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)
    start = {name: t.clone() for name, t in model.state_dict().items()}
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.01, warmup_steps=5, weight_decay=0.0)
    opt.train()
    inputs, targets = data.train_epoch(cfg.data.batch_size, seed=cfg.seed, epoch=0)[0]
    F.cross_entropy(model(inputs), targets).backward()
    opt.step()
    opt.eval()
    ema = load_checkpoint(tmp_path / "last.pt")["controls"]["ema"]
    for name, x in model.state_dict().items():
        assert torch.allclose(ema[name], 0.5 * start[name] + 0.5 * x, rtol=1e-6, atol=1e-7), name


def test_batch_norm_is_recomputed_at_x_before_validation(tmp_path):
    overrides = ["optimizer=schedule_free_sgd", "schedule=constant", "optimizer.lr=0.5", "trainer.clip_grad_norm=null",
                 "model=target", "model._target_=tests.userpkg.nets.BatchNormNet", "optimizer.bn_batches=3",
                 "trainer.max_epochs=2"]
    metrics = train(compose_config(*overrides), tmp_path)
    cfg = compose_config(*overrides)
    from tests.userpkg.nets import BatchNormNet

    data = build_dataset(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    net = BatchNormNet(data.input_shape, data.num_classes)
    model, _, data = reference_run(cfg, schedulefree.SGDScheduleFree, {"lr": 0.5, "weight_decay": 0.0}, epochs=2,
                                   model=net, bn_batches=3)
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    for name in ("body.2.running_mean", "body.2.running_var", "body.1.weight"):
        assert torch.allclose(saved[name], model.state_dict()[name], rtol=1e-5, atol=1e-6), name
    assert metrics["val/loss"] == pytest.approx(val_loss(model, data), rel=1e-5)
    # The statistics gathered at y during training would have given another loss.
    model.body[2].running_mean.add_(0.5)
    assert abs(val_loss(model, data) - metrics["val/loss"]) > 1e-3


@pytest.mark.parametrize("schedule, refused", [
    ([], "schedule=warmup_cosine"),  # TINY's default schedule
    (["schedule=constant", "schedule.warmup_steps=3"], "a schedule warmup"),
    (["schedule=cosine"], "schedule=cosine"),
])
def test_a_schedule_on_top_is_refused_in_one_line_unless_asked_for(train_cli, schedule, refused):
    proc, run_dir = train_cli("optimizer=schedule_free_adamw", *schedule, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: optimizer.allow_schedule:") and refused in lines[0], lines
    assert not run_dir.exists()
    validate(compose_config("optimizer=schedule_free_adamw", *schedule, "optimizer.allow_schedule=true"))


def test_a_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "schedulefree" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'trainer\[schedulefree\]'"):
        validate(compose_config("optimizer=schedule_free_sgd", "schedule=constant"))


@pytest.mark.parametrize("optimizer", ["schedule_free_adamw", "schedule_free_sgd"])
def test_the_real_command_trains_to_completion(train_cli, optimizer):
    proc, run_dir = train_cli(f"optimizer={optimizer}", "schedule=constant", "trainer.max_epochs=2")
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["status"] == "completed" and result["metrics"]["updates"] == 2 * UPDATES_PER_EPOCH
    assert result["metrics"]["val/loss"] < 1.3  # below chance (ln 4 = 1.386) after 16 updates
    assert (run_dir / "best.pt").exists()
