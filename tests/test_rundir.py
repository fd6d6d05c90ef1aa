"""The run directory: one run at a time (a dead holder's lock is stale), and an unusable one is refused first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, compose_config, run_cli
from trainer.app.run import train
from trainer.errors import ConfigError
from trainer.rundir.lock import LOCK_FILE, check_writable

HOLD = "import sys; from pathlib import Path; from trainer.rundir.lock import hold_run_dir\n" \
       "with hold_run_dir(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()"


def test_a_second_run_is_refused_while_the_first_lives_and_welcome_once_it_was_killed(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == "held\n"  # blocks until the lock is taken
    args = [*TINY, "schedule=cosine", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    second = run_cli("trainer", args, check=False)
    assert second.returncode == 2
    assert second.stderr == (f"error: hydra.run.dir: {run_dir} is in use by another run (pid {holder.pid} on "
                             f"{os.uname().nodename}): wait for it to end, or pick another hydra.run.dir\n")
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # the second run wrote nothing

    holder.send_signal(signal.SIGKILL)  # no chance to clean up: its lock file stays, its lock does not
    holder.wait()
    assert (run_dir / LOCK_FILE).read_text() == f"pid {holder.pid} on {os.uname().nodename}\n"
    run_cli("trainer", args)
    assert not (run_dir / LOCK_FILE).exists() and (run_dir / "last.pt").is_file()


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint at"):
        train(compose_config("schedule=cosine", f"trainer.resume={tmp_path / 'missing.pt'}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # made for the lock, removed with it
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint at"):
        train(compose_config("schedule=cosine", f"trainer.resume={tmp_path / 'missing.pt'}"), tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())  # the user's: kept


def test_leftover_temp_files_are_removed_when_the_next_run_starts(tmp_path):
    stale = [tmp_path / ".last.pt.0badf00d.tmp", tmp_path / ".best.pt.12345678.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("the user's")
    train(compose_config("schedule=cosine", "trainer.max_epochs=1"), tmp_path)
    assert not any(path.exists() for path in stale) and (tmp_path / "notes.tmp").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write: a read-only tmpfs for root, else mode 0555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"root, and cannot mount a read-only tmpfs: {made.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_unusable_run_dirs_are_refused_with_one_line_before_anything_else(tmp_path, read_only_dir):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    cases = {
        a_file: f"{a_file} is a file, not a directory",
        a_file / "run": f"{a_file} is a file, so {a_file / 'run'} cannot be made",
        read_only_dir: f"{read_only_dir} is not writable (a read-only file system, or no permission)",
        read_only_dir / "run": f"{read_only_dir} is not writable (a read-only file system, or no permission)",
    }
    for run_dir, words in cases.items():
        with pytest.raises(ConfigError) as error:
            check_writable(run_dir)
        assert str(error.value).startswith(f"hydra.run.dir: {words}")
    # The CLI checks before Hydra makes the directory, and before the config itself (TINY's default
    # warmup of 100 steps is longer than its 24 updates: an error of its own).
    for run_dir in (a_file, read_only_dir / "run"):
        proc = run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}"], check=False)
        assert proc.returncode == 2 and proc.stderr == f"error: hydra.run.dir: {cases[run_dir]}: pick another hydra.run.dir\n"
    assert a_file.read_text() == "not a directory" and not list(read_only_dir.iterdir())
