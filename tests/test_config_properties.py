"""Property-based: random valid configs train a few updates; random invalid ones fail up front."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import compose_config
from trainer.app.run import train
from trainer.app.validate import validate
from trainer.errors import ConfigError
from trainer.plan import plan_run
from trainer.rundir.events import read_scalars
from trainer.schedules.registry import schedule_names, spec_of

UPDATES_PER_EPOCH = 8  # the tiny job: 256 examples / batch 32


@st.composite
def valid_configs(draw):
    name = draw(st.sampled_from(schedule_names()))
    interval = "step" if name in ("onecycle", "lr_range_test") else draw(st.sampled_from(["step", "epoch", "sample"]))
    max_epochs = draw(st.integers(1, 3))
    per_update = {"step": 1, "epoch": 1 / UPDATES_PER_EPOCH, "sample": 32}[interval]  # T in the interval's units
    total = int(max_epochs * UPDATES_PER_EPOCH * per_update)
    if name in ("lr_range_test", "chain"):  # its length is num_steps; a chain's warmup is a phase
        warmup = 0
    else:
        warmup = draw(st.integers(1 if name == "inverse_sqrt" else 0, max(1, total // 2)))
    overrides = [
        f"schedule={name}",
        f"schedule.interval={interval}",
        f"schedule.warmup_steps={warmup}",
        f"trainer.max_epochs={max_epochs}",
        f"optimizer={draw(st.sampled_from(['adamw', 'sgd']))}",
        f"optimizer.lr={draw(st.floats(1e-4, 1e-1))}",
        f"trainer.clip_grad_norm={draw(st.sampled_from(['null', '0.5', '5.0']))}",
        f"trainer.precision={draw(st.sampled_from(['fp32', 'bf16']))}",
        f"logger.log_every_n_steps={draw(st.integers(1, 5))}",
    ]
    if name == "wsd":
        overrides.append(f"schedule.decay_steps={draw(st.integers(0, total - warmup))}")
    if name == "lr_range_test":
        overrides.append(f"schedule.num_steps={draw(st.integers(3, 12))}")
    return overrides


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_random_valid_configs_train(overrides):
    cfg = compose_config(*overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = train(cfg, Path(run_dir))
        lrs = [v for _, v in read_scalars(run_dir)["train/lr"]]
    run_length = spec_of(cfg.schedule.name).run_length  # the range test's num_steps
    assert metrics["updates"] == plan_run(cfg, 256, run_length=cfg.schedule[run_length] if run_length else None).max_updates
    assert all(math.isfinite(lr) and lr >= 0 for lr in lrs)
    assert math.isfinite(metrics["val/loss"])


INVALID = {
    "optimizer.lr": st.floats(max_value=0.0, allow_nan=False).map(str),
    "trainer.accumulate_grad_batches": st.integers(max_value=0).map(str),
    "trainer.clip_grad_norm": st.floats(max_value=0.0, allow_nan=False).map(str),
    "trainer.max_epochs": st.integers(max_value=0).map(str),
    "trainer.val_every_n_epochs": st.integers(max_value=0).map(str),
    "logger.log_every_n_steps": st.integers(max_value=0).map(str),
    "data.batch_size": st.integers(max_value=0).map(str),
    "schedule.warmup_steps": st.integers(max_value=-1).map(str),
    "schedule.interval": st.text("abcdefghijklmnopqrstuvwxyz", min_size=1).filter(
        lambda s: s not in ("step", "epoch", "sample", "token", "time")),
    "trainer.device": st.sampled_from(["tpu", "gpu", "mps0"]),
    "trainer.precision": st.sampled_from(["fp8", "half", "int8"]),
    "trainer.nonfinite": st.sampled_from(["ignore", "warn"]),
    "seed": st.integers(max_value=-1).map(str),
}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(INVALID)).flatmap(lambda key: st.tuples(st.just(key), INVALID[key])))
def test_random_invalid_values_name_their_key(key_and_value):
    key, value = key_and_value
    with pytest.raises(ConfigError) as error:
        validate(compose_config("schedule=cosine", f"{key}={value}"))
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: got ")
