"""trainer.fit as a notebook uses it: quick fits in a loop, the caller's generators, the workers a
dataset in memory needs, regressions and given models without classes, an interrupt, and training
a run on for longer."""

from __future__ import annotations

import json
import os
import random
import signal
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import trainer
import trainer.api
from tests.conftest import QUIET
from tests.userpkg.data import Blobs
from tests.userpkg.nets import WideNet
from trainer.data.map_style import MAX_AUTO_WORKERS, worker_count
from trainer.errors import ConfigError
from trainer.training.step import TrainStep

RUN = [*QUIET, "schedule=constant", "data.batch_size=8", "trainer.max_steps=4"]


def classes(size: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(size)
    return TensorDataset(torch.randn(size, 8, generator=g), torch.randint(0, 3, (size,), generator=g))


def test_quick_fits_in_a_loop_each_get_their_own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer.api.time, "strftime", lambda fmt: "2026-12-05/10-00-00")  # all in one second
    for _ in range(4):
        trainer.fit(WideNet((8,), 3), classes(), overrides=RUN)
    day = tmp_path / "outputs" / "2026-12-05"
    assert sorted(p.name for p in day.iterdir()) == ["10-00-00", "10-00-00-1", "10-00-00-2", "10-00-00-3"]
    for run in day.iterdir():
        assert json.loads((run / "metrics.json").read_text())["metrics"]["updates"] == 4


def test_fit_leaves_the_callers_generators_as_they_were(tmp_path):
    model, data = WideNet((8,), 3), classes()
    torch.manual_seed(123)
    random.seed(7)
    expected = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(7)
    trainer.fit(model, data, overrides=[*RUN, "trainer.max_steps=1"], run_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_tensors_in_memory_read_without_workers_and_others_with_the_machines_cpus(tmp_path):
    assert worker_count("auto", classes()) == 0
    assert worker_count("auto", Blobs(8)) == min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0)))
    assert worker_count(3, classes()) == 3  # a number as it is
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(WideNet((8,), 3), classes(), classes(16), overrides=RUN, run_dir=tmp_path / "run")
    assert [str(w.message) for w in caught if "worker" in str(w.message)] == []  # torch's "too many workers"


def test_a_regression_and_a_given_model_need_no_classes(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True))  # float targets, no classes attribute
    metrics = trainer.fit(nn.Linear(4, 1), data, data, run_dir=tmp_path / "run",
                          overrides=[*RUN, "loss._target_=torch.nn.MSELoss", "optimizer.lr=0.05"])
    assert metrics["updates"] == 4 and "val/loss" in metrics and "val/acc" not in metrics


def test_an_interrupted_fit_raises_preempted_and_a_second_fit_continues_it(tmp_path, monkeypatch):
    assert trainer.Preempted is trainer.errors.Preempted
    original = TrainStep.__call__

    def interrupted(self, micro_batches, update):
        if update == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a notebook's interrupt during update 2
        return original(self, micro_batches, update)

    torch.manual_seed(0)
    straight = trainer.fit(WideNet((8,), 3), classes(), overrides=RUN, run_dir=tmp_path / "straight")
    torch.manual_seed(0)
    model = WideNet((8,), 3)
    with monkeypatch.context() as patch:
        patch.setattr(TrainStep, "__call__", interrupted)
        with pytest.raises(trainer.Preempted, match="after 3 updates"):
            trainer.fit(model, classes(), overrides=RUN, run_dir=tmp_path / "run")
    resumed = trainer.fit(model, classes(), overrides=[*RUN, "trainer.resume=auto"], run_dir=tmp_path / "run")
    assert resumed["updates"] == 4 and resumed["train/loss"] == straight["train/loss"]


def test_training_a_run_on_for_longer_from_python(tmp_path):
    run = [*QUIET, "schedule=constant", "data.batch_size=8"]
    trainer.fit(WideNet((8,), 3), classes(), overrides=[*run, "trainer.max_steps=4"], run_dir=tmp_path)
    with pytest.raises(ConfigError) as refused:
        trainer.fit(WideNet((8,), 3), classes(), overrides=[*run, "trainer.max_steps=8", "trainer.resume=auto"],
                    run_dir=tmp_path)
    assert refused.value.key == "trainer.resume_schedule" and str(refused.value).count("->") == 1  # the one difference
    assert "(total_steps: 4 -> 8)" in str(refused.value)
    metrics = trainer.fit(WideNet((8,), 3), classes(), run_dir=tmp_path, overrides=[
        *run, "trainer.max_steps=8", "trainer.resume=auto", "trainer.resume_schedule=override"])
    assert metrics["updates"] == 8
