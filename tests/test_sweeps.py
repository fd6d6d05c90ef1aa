"""Sweeps end to end: multirun job dirs, the comparison report, range test, Optuna, HParams."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
from omegaconf import OmegaConf
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

from tests.conftest import TINY, compose_config, run_cli
from trainer.compare import collect, write_report
from trainer.rundir.events import read_scalars
from trainer.rundir.hparams import hparam_infos, hyperparameters

needs_sweep_extra = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None
    or importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason='the optional sweep plugins are not installed (pip install -e ".[sweep]")',
)


def sweep(tmp_path, *overrides, module="trainer", check=True):
    """A multirun with the swept keys first (job directories are named in command-line order)."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(module, ["-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}"], check=check)
    return proc, sweep_dir


def report_rows(sweep_dir):
    lines = (sweep_dir / "report.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| job |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(columns, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def hparams_table(logdir):
    """What TensorBoard's HParams tab shows for ``logdir``, through its own plugin backend: the
    experiment (columns, differing ones first, as the dashboard orders them) and the session
    groups (rows) -> (columns, {row name: ({hparam: value}, {metric: value})})."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(data_provider=provider, logdir=str(logdir)))
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, backend, "", api_pb2.GetExperimentRequest()).run()
    columns = [api_pb2.ColParams(hparam=info.name) for info in experiment.hparam_infos]
    columns += [api_pb2.ColParams(metric=info.name) for info in experiment.metric_infos]
    groups = list_session_groups.Handler(request, backend, "", api_pb2.ListSessionGroupsRequest(
        col_params=columns, allowed_statuses=[api_pb2.STATUS_SUCCESS], start_index=0, slice_size=100,
    )).run()
    rows = {
        group.name: ({k: getattr(v, v.WhichOneof("kind")) for k, v in group.hparams.items()},
                     {m.name.tag: m.value for m in group.metric_values})
        for group in groups.session_groups
    }
    return list(experiment.hparam_infos), rows


def test_three_schedule_multirun_its_report_and_hparams_table(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "schedule=constant,cosine,onecycle", "optimizer.lr=0.01", "trainer.max_epochs=2")
    assert "No path found" not in proc.stdout + proc.stderr  # TensorBoard's reader is quiet
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(jobs) == 3
    for number, (job, schedule) in enumerate(zip(jobs, ["constant", "cosine", "onecycle"])):
        assert job.name.startswith(f"{number}_schedule={schedule},optimizer.lr=0.01,")  # named by overrides
    # The sweep wrote its own report on the way out.
    assert f"sweep: 3 of 3 jobs completed; report: {sweep_dir / 'report.md'}" in proc.stdout
    rows = report_rows(sweep_dir)
    assert sorted(r["schedule"] for r in rows) == ["constant", "cosine", "onecycle"]
    finals = {}
    for job in jobs:
        name = OmegaConf.load(job / "config.yaml").schedule.name
        finals[name] = read_scalars(job)["val/loss"][-1][1]
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
    for row in rows:
        assert float(row["final val/loss"]) == pytest.approx(finals[row["schedule"]], abs=1e-4)
        assert row["updates"] == "16" and row["status"] == "completed"
        assert row["overrides"] == f"schedule={row['schedule']}"  # shared overrides are factored out
    losses = [float(r["final val/loss"]) for r in rows]
    assert losses == sorted(losses)
    for image in ("lr.png", "loss.png"):
        assert (sweep_dir / image).read_bytes()[:4] == b"\x89PNG"
    assert len((sweep_dir / "report.csv").read_text().splitlines()) == 4
    # One experiment, in the first job's directory; the others write only their sessions, and the
    # root has no event file (TensorBoard would list it as an empty run ".").
    assert not list(sweep_dir.glob("events.out.tfevents.*"))
    for number, job in enumerate(jobs):
        accumulator = EventAccumulator(str(job))
        accumulator.Reload()
        assert set(accumulator.PluginTagToContent("hparams")) == {
            "_hparams_/session_start_info", "_hparams_/session_end_info", *["_hparams_/experiment"][number:]}
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep_dir))
    assert sorted(multiplexer.Runs()) == [job.name for job in jobs]
    infos, table = hparams_table(sweep_dir)
    # The swept keys alone, before the metrics: the dashboard ticks them (and up to 5 columns).
    # (schedule=... is the column schedule.name: one column, not two that always agree)
    assert [(info.name, info.differs) for info in infos] == [("schedule.name", True)]
    assert sorted(table) == [job.name for job in jobs]
    for job in jobs:
        values, metric_values = table[job.name]
        assert values["schedule.name"] == OmegaConf.load(job / "config.yaml").schedule.name
        assert values["optimizer.lr"] == pytest.approx(0.01)
        assert metric_values["val/loss"] == pytest.approx(read_scalars(job)["val/loss"][-1][1])


def test_the_report_draws_each_jobs_lr_of_every_update_not_the_logged_points(tmp_path):
    """A cyclic schedule of period 8 logged every 5 updates would look like a period-40 triangle."""
    sweep_dir = tmp_path / "sweep"
    run_cli("trainer", ["-m", "schedule=cyclic", "schedule.step_size_up=4", "schedule.min_lr=0", "optimizer.lr=0.01",
                        "trainer.max_epochs=2", *TINY, "logger.log_every_n_steps=5", f"hydra.sweep.dir={sweep_dir}"])
    triangle = [0.01 * (1 - abs(t % 8 - 4) / 4) for t in range(16)]  # CyclicLR's triangular wave
    (job,) = collect(sweep_dir)
    assert [u for u, _ in job.lr_curve] == list(range(16))
    assert [lr for _, lr in job.lr_curve] == pytest.approx(triangle, abs=1e-12)
    assert [s for s, _ in job.scalars["train/lr"]] == [0, 5, 10, 15]  # what TensorBoard has
    assert "![LR of every update, from each job's schedule (its lr.csv)](lr.png)" in (sweep_dir / "report.md").read_text()
    # A job without lr.csv (older runs; plateau, whose cuts only its logs know) shows its logged LR, and says so.
    next(sweep_dir.glob("0_*/lr.csv")).unlink()
    write_report(sweep_dir)
    assert "jobs marked (logged): train/lr as logged, every logger.log_every_n_steps updates" in (
        sweep_dir / "report.md").read_text()
    assert collect(sweep_dir)[0].lr_curve == []


def test_a_diverging_job_stops_alone_and_the_sweep_goes_on(tmp_path):
    """nonfinite=stop in a sweep: the diverging LR is one result; the later jobs still run."""
    proc, sweep_dir = sweep(
        tmp_path, "optimizer.lr=1e30,0.01", "optimizer=sgd", "schedule=cosine", "trainer.nonfinite=stop",
        "trainer.max_epochs=1", check=False,
    )
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    statuses = {r["job"]: r["status"] for r in report_rows(sweep_dir)}
    assert statuses == {"0": "stopped_nonfinite", "1": "completed"}
    completed = next(p for p in sweep_dir.iterdir() if p.name.startswith("1_"))
    assert len(read_scalars(completed)["train/lr"]) == 8  # every update of the job after the stop


def test_a_sweep_rerun_into_its_directory_reports_only_its_own_jobs(tmp_path):
    first, sweep_dir = sweep(tmp_path, "optimizer.lr=0.01,-1", "schedule=cosine", "trainer.max_epochs=1", check=False)
    assert first.returncode == 2
    again, _ = sweep(tmp_path, "optimizer.lr=0.01,0.02", "schedule=cosine", "trainer.max_epochs=1")
    assert "sweep: 2 of 2 jobs completed" in again.stdout  # the first sweep's failed job is not this one's
    assert sorted(r["overrides"] for r in report_rows(sweep_dir)) == ["optimizer.lr=0.01", "optimizer.lr=0.02"]
    reused = next(p for p in sweep_dir.iterdir() if p.name.startswith("0_"))
    # each run's events, and the sweep's experiment once: the rerun's replaced the first sweep's
    assert len(list(reused.glob("events.out.tfevents.*[0-9]"))) == 2
    assert len(list(sweep_dir.glob("*/events.out.tfevents.*.sweep_experiment"))) == 1
    assert [step for step, _ in read_scalars(reused)["train/lr"]] == list(range(8))  # the rerun hides the first run


def test_a_crashing_job_fails_alone_and_the_sweep_still_reports(tmp_path):
    """trainer.nonfinite=raise raises inside the job: Hydra would re-raise it after the last job and
    skip the report; the job is failed with its error instead."""
    proc, sweep_dir = sweep(tmp_path, "optimizer.lr=1e30,0.1", "optimizer=sgd", "schedule=cosine",
                            "trainer.nonfinite=raise", "trainer.max_epochs=1", check=False)
    assert proc.returncode == 2 and "NonFiniteError" in proc.stderr  # its traceback is printed
    statuses = {r["job"]: r["status"] for r in report_rows(sweep_dir)}
    assert statuses["0"].startswith("failed: NonFiniteError") and statuses["1"] == "completed"


def test_report_survives_failed_and_unfinished_jobs(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "schedule=cosine", "optimizer.lr=0.01,-1", "trainer.max_epochs=1", check=False)
    assert "error: optimizer.lr" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode == 2  # the sweep ran every job, then said one failed
    assert "sweep: 1 of 2 jobs completed" in proc.stdout
    assert "job 1_schedule=cosine,optimizer.lr=-1," in proc.stderr and ": failed: optimizer.lr: got -1" in proc.stderr
    unfinished = next(p for p in sweep_dir.iterdir() if p.name.startswith("0_"))
    (unfinished / "metrics.json").unlink()  # as if the job were still running or had been killed
    write_report(sweep_dir)
    statuses = {r["job"]: r["status"] for r in report_rows(sweep_dir)}
    assert statuses["0"] == "incomplete (running or killed)"
    assert statuses["1"].startswith("failed: optimizer.lr: got -1")


def assert_refused(proc, start):
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(start), proc.stderr
    assert "Traceback" not in proc.stdout and proc.stdout == ""


def test_compare_refuses_a_directory_without_runs_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)  # a sub-directory, but no run in it
    assert_refused(run_cli("trainer.compare", [str(empty)], check=False), f"error: SWEEP_DIR: {empty} holds no runs")
    assert_refused(run_cli("trainer.compare", [str(tmp_path / "nope")], check=False),
                   f"error: SWEEP_DIR: {tmp_path / 'nope'} is not a directory")
    assert [p.name for p in empty.iterdir()] == ["notes"] and not (tmp_path / "nope").exists()


def test_compare_refuses_one_runs_directory_and_names_its_parent(train_cli, tmp_path):
    _, run_dir = train_cli("trainer.max_epochs=1")
    before = sorted(p.name for p in run_dir.iterdir())
    proc = run_cli("trainer.compare", [str(run_dir)], check=False)
    assert_refused(proc, f"error: SWEEP_DIR: {run_dir} is one run's directory, not a sweep's")
    assert proc.stderr.rstrip().endswith(f"e.g. {tmp_path}")
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no report.md beside its files
    run_cli("trainer.compare", [str(tmp_path)])  # its parent compares it
    assert [(r["job"], r["status"]) for r in report_rows(tmp_path)] == [("run", "completed")]


def test_compare_lists_jobs_whose_metrics_json_is_empty_or_not_json_as_failed(tmp_path):
    for name, content in (("0_optimizer.lr=0.1", b""), ("1_optimizer.lr=0.2", b"\x00\xff{")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_bytes(content)
    proc = run_cli("trainer.compare", [str(tmp_path)])
    assert "Traceback" not in proc.stderr
    rows = report_rows(tmp_path)
    assert [(r["overrides"], r["status"]) for r in rows] == [
        ("optimizer.lr=0.1", "failed: metrics.json unreadable (JSONDecodeError)"),
        ("optimizer.lr=0.2", "failed: metrics.json unreadable (UnicodeDecodeError)"),
    ]


def test_range_test_stops_on_divergence_and_suggests_an_lr(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", "optimizer=sgd", "data.train_size=2048",
                        "schedule=lr_range_test", "schedule.min_lr=1e-4", "schedule.max_lr=100",
                        "schedule.num_steps=60", "trainer.max_epochs=1"])
    found = json.loads((run_dir / "lr_find.json").read_text())
    lrs = [v for _, v in read_scalars(run_dir)["train/lr"]]
    stop = found["stopped_early_at_update"]
    assert stop is not None and stop < 60 and len(lrs) == stop  # diverged before max_lr
    assert lrs == pytest.approx([1e-4 * (1e6) ** (t / 59) for t in range(stop)], rel=1e-6)
    assert 1e-4 <= found["suggested_lr"] < found["lr_at_min_loss"] <= lrs[-1]
    assert "steepest" in found["rule"]
    assert (run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_a_single_run_has_its_own_hparams_table(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", "schedule=cosine", "optimizer.lr=0.02",
                        "trainer.max_epochs=1"])
    infos, table = hparams_table(run_dir)
    assert not any(info.differs for info in infos)
    values, metric_values = table["."]
    assert values["optimizer.lr"] == pytest.approx(0.02) and values["schedule.name"] == "cosine"
    assert set(metric_values) == {"val/loss", "val/acc"}
    assert metric_values["val/acc"] == pytest.approx(read_scalars(run_dir)["val/acc"][-1][1])


def test_every_key_any_run_set_is_a_column_and_differs_where_runs_disagree():
    runs = [
        {"seed": 0, "optimizer.lr": 0.1, "schedule": "cosine"},
        {"seed": 0, "optimizer.lr": 0.1, "schedule": "wsd", "logger.log_every_n_steps": 5},
        {"seed": 0, "optimizer.lr": 0.3, "schedule": "wsd", "trainer.compile": True},
    ]
    infos = {info.name: info for info in hparam_infos(runs)}
    assert list(infos) == ["optimizer.lr", "schedule", "logger.log_every_n_steps", "trainer.compile", "seed"]
    assert [info.differs for info in infos.values()] == [True, True, True, True, False]
    lr = infos["optimizer.lr"]
    assert lr.type == api_pb2.DATA_TYPE_FLOAT64
    assert (lr.domain_interval.min_value, lr.domain_interval.max_value) == (0.1, 0.3)
    assert [v.string_value for v in infos["schedule"].domain_discrete.values] == ["cosine", "wsd"]
    assert infos["trainer.compile"].type == api_pb2.DATA_TYPE_BOOL


def test_hparams_show_a_list_override_as_text():
    overrides = ["schedule=multistep", "schedule.milestones=[2,4]"]
    values = hyperparameters(compose_config(*overrides), overrides)
    assert values["schedule.milestones"] == "[2, 4]" and values["schedule.name"] == "multistep"
    assert "schedule" not in values


def test_preview_of_several_schedules_on_one_plot(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "schedule=cosine,onecycle", "trainer.max_steps=40", module="trainer.preview")
    assert len(list(sweep_dir.glob("*/lr.csv"))) == 2
    assert (sweep_dir / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert "every schedule of the sweep" in proc.stdout


def test_a_preview_sweep_with_a_refused_job_exits_2_and_keeps_the_others(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "optimizer.lr=0.01,-1", "trainer.max_steps=40", module="trainer.preview",
                            check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: optimizer.lr: got -1; expected a finite number > 0"]
    assert "Traceback" not in proc.stdout
    # The good job's preview and the combined plot stand; the refused job leaves no empty directory.
    (job,) = [p for p in sweep_dir.iterdir() if p.is_dir()]
    assert job.name.startswith("0_optimizer.lr=0.01,") and sorted(p.name for p in job.iterdir()) == ["lr.csv", "lr.png"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_file()) == ["lr.png", "multirun.yaml"]


@needs_sweep_extra
def test_optuna_search_runs_two_trials(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_cli("trainer", [*TINY, "hparams_search=schedule_optuna", "hydra.sweeper.n_trials=2",
                        f"hydra.sweep.dir={sweep_dir}", "trainer.max_epochs=40"])
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert math.isfinite(results.best_value)
    assert set(results.best_params) == {"schedule", "optimizer.lr", "schedule.warmup_steps"}
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert len(summaries) == 2
    assert min(s["metrics"]["val/loss"] for s in summaries) == pytest.approx(results.best_value)


@needs_sweep_extra
def test_optuna_search_survives_failing_trials(tmp_path):
    """8 updates: nearly every sampled warmup (0..300) is too long, so trials fail as configs; each
    is told to Optuna as the worst value (+inf) and the search runs all of them."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("trainer", [*TINY, "hparams_search=schedule_optuna", "hydra.sweeper.n_trials=3",
                               f"hydra.sweep.dir={sweep_dir}", "trainer.max_epochs=1"], check=False)
    assert "Traceback" not in proc.stderr
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert len(summaries) == 3 and "failed" in {s["status"] for s in summaries}
    assert proc.returncode == 2  # the search finished, and says some of its jobs failed
    assert (sweep_dir / "optimization_results.yaml").is_file()


@needs_sweep_extra
def test_optuna_takes_a_run_that_diverged_while_skipping_as_the_worst_value(tmp_path):
    """trainer.nonfinite=skip: a diverged run completes with a NaN val/loss, which Optuna would fail."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("trainer", ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "optimizer=sgd",
                               "optimizer.lr=choice(1e30,1e31)", "schedule=cosine", *TINY, "trainer.max_epochs=1",
                               f"hydra.sweep.dir={sweep_dir}"], check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert all(math.isnan(s["metrics"]["val/loss"]) for s in summaries)
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").best_value == math.inf


@needs_sweep_extra
def test_parallel_local_jobs_share_the_cores(tmp_path):
    from joblib import cpu_count  # the CPUs joblib divides among its jobs (this process's affinity)

    sweep_dir = tmp_path / "sweep"
    run_cli("trainer", ["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "schedule=constant,cosine",
                        "trainer.max_epochs=1", *TINY, "trainer.num_threads=auto", f"hydra.sweep.dir={sweep_dir}"])
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    # Each job ran with its share of the cores (joblib's rule, unless OMP_NUM_THREADS is set
    # already), so the two together use them all and no more.
    share = int(os.environ.get("OMP_NUM_THREADS") or max(cpu_count() // 2, 1))
    threads = [OmegaConf.load(p).trainer.num_threads for p in sorted(sweep_dir.glob("*/config.yaml"))]
    assert threads == [share, share]


def test_range_test_that_diverges_at_once_reports_no_suggestion(tmp_path):
    from trainer.controls.range_test import RangeTestMonitor, write_lr_find

    monitor = RangeTestMonitor(lrs=[1e-3, 1e-2, 1e-1], losses=[2.3, float("nan"), float("nan")], stopped_early_at=2)
    found = write_lr_find(tmp_path, monitor)
    assert found["suggested_lr"] is None and "too few finite losses" in found["rule"]
    assert json.loads((tmp_path / "lr_find.json").read_text())["stopped_early_at_update"] == 2
    assert not (tmp_path / "lr_find.png").exists()
