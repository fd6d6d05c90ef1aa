"""A user's own model, data, loss and optimizer through ``_target_``, ``trainer.fit``, and exact
resume for map-style data with worker processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import trainer
from tests.conftest import QUIET, REPO, TINY, compose_config
from tests.data.test_map_style import write_image_folder
from tests.test_resume import preempt_after
from tests.userpkg.data import Blobs, blob_tensors
from tests.userpkg.nets import WideNet
from trainer.app.run import train
from trainer.data import build_dataset
from trainer.errors import ConfigError, Preempted
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars

USER_CONF = REPO / "tests" / "userpkg" / "conf"


def run_user_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m trainer --config-dir tests/userpkg/conf ...`` with the user's package on PYTHONPATH
    (as ``userpkg``, not as part of the tests)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--config-dir", str(USER_CONF), *QUIET, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


def warmup_cosine(t: int, *, peak: float, warmup: int, total: int, floor: float) -> float:
    """Seed 000's get_lr: η t / W, then floor + ½(η − floor)(1 + cos(π (t − W) / (T − W)))."""
    if t < warmup:
        return peak * t / warmup
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


# data=blobs: 96 training examples in batches of 16 = 6 updates per epoch, 2 epochs
USER_RUN = ["model=wide", "data=blobs", "trainer.max_epochs=2", "schedule.warmup_steps=3", "optimizer.lr=0.01"]


def test_a_users_model_and_dataset_train_through_the_cli_and_through_fit(tmp_path):
    run_dir = tmp_path / "cli"
    proc = run_user_cli(*USER_RUN, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    lrs = [v for _, v in read_scalars(run_dir)["train/lr"]]
    assert lrs == pytest.approx([warmup_cosine(t, peak=0.01, warmup=3, total=12, floor=1e-5) for t in range(12)],
                                rel=1e-6)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["updates"] == 12 and 0.0 <= metrics["val/acc"] <= 1.0
    saved = load_checkpoint(run_dir / "last.pt")
    assert saved["model"]["body.1.weight"].shape == (64, 8)  # width from wide.yaml, 8 features from the data

    # The same model object and datasets through trainer.fit: the same run, to the bit.
    torch.manual_seed(0)  # what the CLI's seed=0 does before it builds the model
    model = WideNet((8,), 3, width=64)
    fitted = trainer.fit(
        model, Blobs(96), Blobs(32, split_seed=1, jitter=0.0), run_dir=tmp_path / "fit",
        overrides=[*QUIET, "trainer.max_epochs=2", "schedule.warmup_steps=3", "optimizer.lr=0.01",
                   "data.num_classes=3", "data.batch_size=16", "data.num_workers=0"],
    )
    assert fitted["val/loss"] == metrics["val/loss"] and fitted["val/acc"] == metrics["val/acc"]
    for name, tensor in load_checkpoint(tmp_path / "fit" / "last.pt")["model"].items():
        assert torch.equal(tensor, saved["model"][name]), name
    assert [v for _, v in read_scalars(tmp_path / "fit")["train/lr"]] == lrs


def test_a_users_in_memory_source_is_one_target_with_the_runs_seed(tmp_path):
    proc = run_user_cli("model=mlp", "data=blob_tensors", "trainer.max_epochs=1", "schedule.warmup_steps=0",
                        "data.size=64", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["updates"] == 64 // 16
    cfg = OmegaConf.create({"_target_": "tests.userpkg.data.blob_tensors", "name": "blobs", "size": 8,
                            "batch_size": 4, "loader": "device", "num_workers": 0})
    assert torch.equal(build_dataset(cfg, seed=5).train_x, blob_tensors(seed=5, size=8).train_x)
    proc = run_user_cli("model=mlp", "data=blob_tensors", "+data.sise=64", f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith("error: data: userpkg.data.blob_tensors(*, seed") and "\n" not in line
    assert line.endswith("takes no argument 'sise'")


def test_fit_without_validation_data_trains_and_reports_no_val_metrics(tmp_path):
    metrics = trainer.fit(WideNet((8,), 3), Blobs(32), overrides=[*QUIET, "trainer.max_epochs=1", "data.num_classes=3",
                                                                   "data.batch_size=8", "schedule=constant", "data.num_workers=0"],
                          run_dir=tmp_path / "run")
    assert metrics["updates"] == 4 and "val/loss" not in metrics and math.isfinite(metrics["train/loss"])
    assert (tmp_path / "run" / "last.pt").is_file()


def test_any_torch_optimizer_class_gets_our_groups_and_schedule(tmp_path):
    train(compose_config("optimizer._target_=torch.optim.RAdam", "schedule=cosine", "optimizer.lr=0.01",
                         "trainer.max_epochs=1"), tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["optimizer"]["kind"] == "RAdam"
    groups = saved["optimizer"]["param_groups"]
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", 0.01), ("no_decay", 0.0)]
    assert all(g["betas"] == (0.9, 0.999) for g in groups)  # adamw.yaml's betas, as a tuple
    lrs = [v for _, v in read_scalars(tmp_path / "run")["train/lr"]]
    assert lrs == pytest.approx([0.005 * (1 + math.cos(math.pi * t / 8)) for t in range(8)], rel=1e-6)

    train(compose_config("optimizer=target", "optimizer._target_=torch.optim.NAdam", "+optimizer.momentum_decay=0.005",
                         "schedule=constant", "trainer.max_steps=2"), tmp_path / "nadam")
    groups = load_checkpoint(tmp_path / "nadam" / "last.pt")["optimizer"]["param_groups"]
    assert groups[0]["momentum_decay"] == 0.005 and groups[0]["weight_decay"] == 0.0


def test_a_torchvision_model_from_the_command_line_and_a_loss_target(tmp_path):
    # torchvision's builders take **kwargs: num_classes comes from the user only
    cfg = compose_config("model=target", "model._target_=torchvision.models.resnet18", "+model.num_classes=3",
                         "data=torch_dataset", "data.train={_target_:tests.userpkg.data.Blobs,size:8,num_features:3}",
                         "data.num_classes=3", "data.batch_size=4", "data.num_workers=0", "schedule=constant",
                         "loss._target_=torch.nn.CrossEntropyLoss", base=QUIET)
    with pytest.raises(ConfigError, match=r"^model: does not take the data's inputs of shape \(2, 3\)"):
        train(cfg, tmp_path / "run")  # 3 features are not an image
    assert not (tmp_path / "run").exists()

    metrics = train(compose_config("loss._target_=torch.nn.MultiMarginLoss", "trainer.max_epochs=1", "schedule=constant"), tmp_path / "hinge")
    assert 0.0 <= metrics["val/acc"] <= 1.0 and math.isfinite(metrics["val/loss"])  # class scores, class indices
    metrics = train(compose_config("model=target", "model._target_=torch.nn.Linear", "+model.in_features=16",
                                   "+model.out_features=1", "loss._target_=tests.test_components.squared_error",
                                   "+loss._partial_=true", "trainer.max_epochs=1", "schedule=constant"), tmp_path / "regression")
    assert "val/acc" not in metrics and math.isfinite(metrics["val/loss"])  # (N, 1) outputs are not class scores


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A user's loss: class indices regressed as numbers."""
    return ((outputs.squeeze(-1) - targets.float()) ** 2).mean()


BAD_INPUTS = {
    "unimportable": (["model=target", "model._target_=mypkg.Nope"], r"^model._target_: cannot import mypkg.Nope"),
    "rejected_argument": (["model=target", "model._target_=torch.nn.Linear", "+model.in_features=16",
                           "+model.out_featurs=4"],
                          r"^model: torch.nn.Linear\(in_features: int, out_features: int, bias: bool = True, "
                          r"device=None, dtype=None\) takes no argument 'out_featurs'$"),
    "not_a_pair": (["data=torch_dataset", "data.train={_target_:tests.userpkg.data.Blobs,size:8,pairs:false}",
                    "data.num_classes=3"], r"^data.train: item 0 is a Tensor, not an \(input, target\) pair"),
    "output_does_not_fit_the_loss": (["loss._target_=torch.nn.MSELoss"],
                                     r"^loss: cannot score the model's outputs \(\(2, 4\)\) against targets of shape "
                                     r"\(2,\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_components_are_one_line_before_anything_is_written(tmp_path, case):
    overrides, message = BAD_INPUTS[case]
    base = QUIET if "data=torch_dataset" in overrides else TINY
    with pytest.raises(ConfigError, match=message):
        train(compose_config(*overrides, "data.num_workers=0", "schedule=constant", base=base), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_unimportable_target_exits_2_with_one_line_and_no_run_dir(tmp_path):
    proc = run_user_cli("model=target", "model._target_=mypkg.Nope", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model._target_: cannot import mypkg.Nope")
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_image_folder_stopped_mid_epoch_with_workers_resumes_bit_identical(tmp_path, monkeypatch):
    # 2 classes x 5 images / batch 2 = 5 updates per epoch, 3 epochs; random-resized crops and flips
    # in 2 worker processes, dropout in this one
    write_image_folder(tmp_path / "train", per_class=5)
    write_image_folder(tmp_path / "val", per_class=2, seed=1)
    overrides = [
        "data=image_folder", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}",
        "data.image_size=8", "data.batch_size=2", "data.num_workers=2", "model=mlp", "model.dropout=0.3",
        "schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=3",
    ]
    train(compose_config(*overrides, base=QUIET), tmp_path / "straight")
    with monkeypatch.context() as patch:
        preempt_after(patch, 7)  # in epoch 1, at its batch 2
        with pytest.raises(Preempted):
            train(compose_config(*overrides, base=QUIET), tmp_path / "resumed")
    train(compose_config(*overrides, "trainer.resume=auto", base=QUIET), tmp_path / "resumed")
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["update"] == b["update"] == 15
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    logs_a, logs_b = read_scalars(tmp_path / "straight"), read_scalars(tmp_path / "resumed")
    for tag in ("train/loss", "val/loss", "val/acc"):
        assert logs_a[tag] == logs_b[tag], tag

