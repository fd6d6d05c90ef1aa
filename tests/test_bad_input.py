"""Bad input through the real CLI: one line ``error: KEY: ...``, exit code 2, and no directory
left behind but the ones the user made, whoever finds the error (our checks, Hydra's composition,
OmegaConf's interpolation, the file system)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import QUIET, REPO, TINY, run_cli


def assert_one_line_error(proc, key):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), proc.stderr
    assert "Traceback" not in proc.stdout


@pytest.mark.parametrize(
    ("overrides", "key", "text"),
    [
        (["schedule=nonexistent"], "schedule", "no config 'nonexistent' in schedule/; known: chain, constant"),  # Hydra's
        (["schedule.min_Lr=0.1"], "schedule.min_Lr", "did you mean min_lr?"),  # Hydra's: not in the config
        (["schedule.min_lr=[1"], "schedule.min_lr", "no viable alternative"),  # Hydra's: does not parse
        (["+foo=1"], "foo", "not a parameter of the config"),
        (["+trainer.max_step=20"], "trainer.max_step", "did you mean max_steps?"),  # trained 96 updates before
        (["schedule=onecycle", "schedule.three_phase=off"], "schedule.three_phase", "got 'off'; expected true or false"),
        (["schedule=onecycle", "schedule.pct_start=0.01", "trainer.max_steps=100"], "schedule.pct_start", "of 100"),
        (["optimizer.lr=${nope}"], "optimizer.lr", "Interpolation key 'nope' not found"),  # OmegaConf's
        (["model=cnn", "schedule.warmup_steps=0"], "model", "model=cnn takes images"),  # found building the model
    ],
)
def test_every_config_error_is_one_line_exit_2_and_no_run_dir(tmp_path, overrides, key, text):
    run_dir = tmp_path / "a" / "run"
    proc = run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", *overrides], check=False)
    assert_one_line_error(proc, key)
    assert text in proc.stderr
    assert list(tmp_path.iterdir()) == []  # neither run/ nor a/, which the run made


#: Issue 14's examples that were tracebacks or trained something else: (overrides, the key named).
#: (model=cnn on data=synthetic is in the test above.)
ISSUE_14_VALUES = [
    (["schedule=onecycle", "schedule.cycle_momentum=off"], "schedule.cycle_momentum"),
    (["optimizer=sgd", "optimizer.nesterov=maybe"], "optimizer.nesterov"),
    (["schedule=multistep", "schedule.milestones=5"], "schedule.milestones"),
    (["optimizer.betas=0.9"], "optimizer.betas"),
    (["optimizer.eps=-1"], "optimizer.eps"),
    (["model.hidden_sizes=[0]"], "model.hidden_sizes"),
    (["model.hidden_sizes=[-3]"], "model.hidden_sizes"),
    (["model.hidden_sizes=[1.5]"], "model.hidden_sizes"),
    (["trainer.label_smoothing=2"], "trainer.label_smoothing"),
    (["trainer.label_smoothing=-0.5"], "trainer.label_smoothing"),
    (["schedule=inverse_time", "schedule.decay_steps=0"], "schedule.decay_steps"),
    (["schedule=onecycle", "schedule.pct_start=1.0"], "schedule.pct_start"),
    (["schedule=exponential", "schedule.gamma=10"], "schedule.gamma"),
]


@pytest.mark.parametrize(("overrides", "key"), ISSUE_14_VALUES, ids=[" ".join(o) for o, _ in ISSUE_14_VALUES])
def test_the_bad_values_issue_14_lists_are_one_line_exit_2_and_leave_nothing(tmp_path, overrides, key):
    proc = run_cli("trainer", [*TINY, f"hydra.run.dir={tmp_path / 'run'}", *overrides], check=False)
    assert_one_line_error(proc, key)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_text_file_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_cli("trainer", [*QUIET, "model=gpt", "data=shakespeare_char", f"data.path={empty}",
                               f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert_one_line_error(proc, "data.path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_a_run_dir_name_longer_than_the_file_system_allows(tmp_path):
    proc = run_cli("trainer", [*TINY, f"hydra.run.dir={tmp_path / 'a' / ('x' * 300) / 'b'}"], check=False)
    assert_one_line_error(proc, "hydra.run.dir")
    assert "300 bytes, longer than the 255" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_directory_the_user_made_is_kept(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    proc = run_cli("trainer", [*TINY, f"hydra.run.dir={mine}", "trainer.max_epochs=0"], check=False)
    assert_one_line_error(proc, "trainer.max_epochs")
    assert mine.is_dir() and list(mine.iterdir()) == []


@pytest.mark.parametrize("module", ["trainer", "trainer.preview"])
def test_an_error_under_the_default_run_dir_leaves_no_empty_date_dir(tmp_path, module):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-m", module, *TINY, "trainer.max_epochs=0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "trainer.max_epochs")
    assert list(tmp_path.iterdir()) == []  # no outputs/DATE/ (previews/DATE/) left


@pytest.mark.parametrize("module", ["trainer", "trainer.preview"])
def test_a_config_file_that_is_not_yaml_is_named_with_its_line(tmp_path, module):
    """A user's ``--config-dir`` with a YAML syntax error on line 3 (YAML's own 105-line traceback
    and exit 1 before): its path as given and the line, exit 2, nothing written."""
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "bad.yaml").write_text("name: mlp\nhidden: 3\n  bad: [1, 2\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-m", module, "--config-dir", "my_conf", "model=bad", *QUIET],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "my_conf/model/bad.yaml:3")
    assert proc.stderr == ("error: my_conf/model/bad.yaml:3: mapping values are not allowed here (column 6): "
                           "fix the YAML there\n")
    assert [p.name for p in tmp_path.iterdir()] == ["my_conf"]  # no outputs/ or previews/


#: Bad input at every door, as a user types it in a fresh directory (which holds my_conf/ with a YAML
#: error, and empty/): (module, arguments, the start of the one line).
DOORS = [
    ("trainer", ["optimizer.lr=-1"], "error: optimizer.lr: got -1"),
    ("trainer", ["--config-dir", "my_conf", "model=bad"], "error: my_conf/model/bad.yaml:3: "),
    ("trainer", ["trainer.device=cuda"], "error: trainer.device: "),
    ("trainer.preview", ["schedule.min_Lr=0.1"], "error: schedule.min_Lr: no such key; did you mean min_lr?"),
    ("trainer.sample", ["missing_run"], "error: RUN_DIR: missing_run is not a directory"),
    ("trainer.compare", ["empty"], "error: SWEEP_DIR: empty holds no runs"),
    ("trainer.compare", [], "error: the following arguments are required: sweep_dir (see python -m trainer.compare --help)"),
    ("trainer.sample", ["--chars", "abc", "missing_run"], "error: argument --tokens/--chars: invalid int value: 'abc'"),
]


@pytest.mark.parametrize(("module", "args", "start"), DOORS, ids=[" ".join([m, *a]) for m, a, _ in DOORS])
def test_every_door_prints_one_line_and_no_warning_before_it(tmp_path, module, args, start):
    """Nothing torch, Hydra or matplotlib warn about (with their defaults: every warning shown once)
    comes before the error line, and nothing is written."""
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "bad.yaml").write_text("name: mlp\nhidden: 3\n  bad: [1, 2\n")
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(start), proc.stderr
    assert "Traceback" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "my_conf"]  # no outputs/, previews/, reports
    assert list((tmp_path / "empty").iterdir()) == []
