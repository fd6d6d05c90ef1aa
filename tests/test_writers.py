"""Log writers (``logger.writers``): metrics.csv holds what the event files hold, exactly once per
step across a resume; MLflow gets the same numbers offline; a user's writer plugs in by its path."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from tests.conftest import TINY, compose_config, run_cli
from tests.test_components import run_user_cli
from tests.test_resume import preempt_after
from trainer.app.run import train
from trainer.app.validate import validate
from trainer.compare import read_job
from trainer.errors import Preempted
from trainer.rundir.events import read_scalars as read_events
from trainer.rundir.writers import read_scalars
from trainer.rundir.writers.csv import FILE, Writer
from trainer.rundir.writers.mlflow import Writer as MlflowWriter
from trainer.rundir.writers.mlflow import settings_of

RUN = ["schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=2"]


def as_float32(points):
    """What an event file keeps of a value: a 32-bit float."""
    return [(step, torch.tensor(value, dtype=torch.float32).item()) for step, value in points]


def test_metrics_csv_holds_every_value_the_event_files_hold(tmp_path):
    train(compose_config(*RUN, "logger.writers=[tensorboard,csv]"), tmp_path)
    events, rows = read_events(tmp_path), read_scalars(tmp_path, ["csv"])
    assert rows.keys() == events.keys() and "val/acc" in rows and "train/skipped_updates" in rows
    for tag in events:
        assert as_float32(rows[tag]) == events[tag], tag
    assert [step for step, _ in rows["train/loss"]] == list(range(16))


def test_a_resumed_csv_drops_what_was_logged_after_the_checkpoint(tmp_path):
    first = Writer(tmp_path, purge_step=0, config={})
    for step in range(10):
        first.scalars(step, {"train/loss": 1.0 / (step + 1), "train/lr": 0.1})
    first.flush()
    with open(tmp_path / FILE, "a") as f:
        f.write("10,train/loss,0.0")  # a row a kill cut short
    resumed = Writer(tmp_path, purge_step=6, config={})  # the checkpoint was at 6 updates
    resumed.scalars(6, {"train/loss": 0.5})
    resumed.close("completed")
    assert read_scalars(tmp_path, ["csv"])["train/loss"] == [(s, 1.0 / (s + 1)) for s in range(6)] + [(6, 0.5)]
    fresh = Writer(tmp_path, purge_step=0, config={})  # a new run in the same directory starts it afresh
    fresh.close("completed")
    assert read_scalars(tmp_path, ["csv"]) == {}


def test_a_row_a_kill_cut_short_is_not_read(tmp_path):
    writer = Writer(tmp_path, purge_step=0, config={})
    writer.scalars(0, {"train/loss": 2.0})
    writer.close("completed")
    with open(tmp_path / FILE, "a") as f:
        f.write("1,train/loss")  # the kill came in the middle of the next row
    assert read_scalars(tmp_path, ["csv"]) == {"train/loss": [(0, 2.0)]}


def test_a_logger_config_without_a_writers_settings_takes_their_defaults(tmp_path):
    cfg = compose_config("logger.writers=[csv,mlflow]")
    with open_dict(cfg.logger):
        del cfg.logger["mlflow"]  # a user's own logger config, written before the mlflow writer existed
    validate(cfg)  # MLflow's default store needs nothing the check refuses here
    assert settings_of(OmegaConf.to_container(cfg))["experiment"] == "trainer"


def test_a_resumed_mlflow_run_keeps_its_first_parameter_values_and_tags_the_changed_ones(tmp_path, monkeypatch):
    import mlflow.tracking

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = {"logger": {"mlflow": {"tracking_uri": f"file:{tmp_path / 'mlruns'}", "experiment": "t"}}}
    first = MlflowWriter(tmp_path, purge_step=0, config=config)
    first.hparams({"optimizer.lr": 0.1, "trainer.max_epochs": 3}, experiment=True)
    first.close("preempted")
    resumed = MlflowWriter(tmp_path, purge_step=8, config=config)
    resumed.hparams({"optimizer.lr": 0.1, "trainer.max_epochs": 6, "seed": 0}, experiment=True)
    resumed.close("completed")
    run = mlflow.tracking.MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}").get_run(first.run_id)
    assert resumed.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.params == {"optimizer.lr": "0.1", "trainer.max_epochs": "3", "seed": "0"}
    assert run.data.tags["resumed/trainer.max_epochs"] == "6"


def test_a_csv_only_run_preempted_and_resumed_equals_one_straight_run_and_reports_from_it(tmp_path, monkeypatch):
    csv = [*RUN, "logger.writers=[csv]"]
    train(compose_config(*csv), tmp_path / "straight")
    with monkeypatch.context() as patch:
        preempt_after(patch, 11)
        with pytest.raises(Preempted):
            train(compose_config(*csv), tmp_path / "resumed")
    train(compose_config(*csv, "trainer.resume=auto"), tmp_path / "resumed")
    straight, resumed = (read_scalars(tmp_path / name, ["csv"]) for name in ("straight", "resumed"))
    assert resumed == straight and not list((tmp_path / "resumed").glob("events.out.tfevents.*"))
    job = read_job(tmp_path / "resumed")  # the sweep report reads it back through the run's writers
    assert job.status == "completed" and job.scalars == straight and job.updates == 16


def test_mlflow_gets_the_same_numbers_offline(tmp_path, monkeypatch):
    import mlflow.tracking  # the dev extra installs the client: this test always runs
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a file: store
    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    run_cli("trainer", [*TINY, *RUN, f"hydra.run.dir={run_dir}", "logger.writers=[csv,mlflow]",
                        "optimizer.lr_scales={1:0.1}",  # groups at their own LRs: train/lr/<group> tags
                        f"logger.mlflow.tracking_uri=file:{store}", "logger.mlflow.experiment=tests"],
            env={"MLFLOW_ALLOW_FILE_STORE": "true"})
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{store}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["optimizer.lr"] == "0.01"
    rows = read_scalars(run_dir, ["csv"])
    for tag, key in [("train/loss",) * 2, ("val/loss",) * 2, ("train/lr/decay", "train/lr.decay")]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == rows[tag], tag


def test_a_users_writer_class_plugs_in_by_its_dotted_path(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_user_cli("model=wide", "data=blob_tensors", "data.size=64", "trainer.max_epochs=1", "schedule=cosine",
                        "logger.writers=[userpkg.logs.JsonLines,csv]", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in (run_dir / "scalars.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "step" in line]
    rows = read_scalars(run_dir, ["csv"])
    assert [(line["step"], line["train/loss"]) for line in steps if "train/loss" in line] == rows["train/loss"]
    assert "hparams" in lines[-2] and lines[-1] == {"status": "completed"}


@pytest.mark.parametrize(("writers", "says"), [
    ("[tensorboard,nope]", "logger.writers.1: unknown writer 'nope'; known: csv, mlflow, tensorboard"),
    ("[csv,csv]", "logger.writers.1: csv is named twice"),
    ("[no.such.Writer]", "logger.writers.0: cannot import no.such.Writer"),
])
def test_a_bad_writer_is_one_line_before_anything_is_written(train_cli, writers, says):
    proc, run_dir = train_cli(f"logger.writers={writers}", check=False)
    assert proc.returncode == 2 and not run_dir.exists()
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith(f"error: {says}")
