"""trainer.num_threads=auto: the cores other processes leave free as a run starts, fixed for the
run, and a resumed run's own count; the user's choice wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, TINY, run_cli
from trainer.app import threads
from trainer.app.threads import CpuClock, busy_elsewhere, pick_threads


def stat_line(busy_ticks: int, idle_ticks: int) -> str:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice."""
    return f"cpu  {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\n"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake /proc/stat and clocks: ``set(wall, busy_s, own_s)`` makes the next reading."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(threads, "PROC_STAT", stat)
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    now = {}
    monkeypatch.setattr(threads.time, "monotonic", lambda: now["wall"])
    monkeypatch.setattr(threads.time, "process_time", lambda: now["own"])

    def set_(wall: float, busy_s: float, own_s: float) -> None:
        stat.write_text(stat_line(round(busy_s * 100), 10**6))
        now.update(wall=wall, own=own_s)

    return set_


@pytest.mark.parametrize(("others_s", "threads_picked"), [
    (0.0, 4),  # alone: every usable core
    (0.9, 4),  # less than half a core taken elsewhere: still every core
    (1.2, 3),  # one core taken (0.6 of a core's time over the 2 s): one fewer
    (2.0, 3),
    (3.2, 2),  # 1.6 cores
    (8.0, 1),  # every core taken elsewhere: one thread, never none
])
def test_auto_takes_the_cores_other_processes_left_free_as_the_run_started(machine, others_s, threads_picked):
    machine(wall=100.0, busy_s=50.0, own_s=1.0)
    since = CpuClock.now()
    machine(wall=102.0, busy_s=50.0 + 1.5 + others_s, own_s=2.5)  # this process used 1.5 s of the 2 s
    assert busy_elsewhere(since) == pytest.approx(others_s / 2)
    assert pick_threads("auto", since=since) == threads_picked


def test_a_number_the_environment_and_a_resumed_run_come_first(machine, monkeypatch):
    machine(wall=100.0, busy_s=0.0, own_s=0.0)
    since = CpuClock.now()
    machine(wall=101.0, busy_s=4.0, own_s=0.0)  # every core busy elsewhere
    assert pick_threads(3, since=since) == 3
    assert pick_threads("auto", since=since, resumed=2) == 2  # continues bit for bit
    assert pick_threads("auto", since=since, resumed=16) == 4  # but never more than it may use
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a parallel launcher's share of the cores
    assert pick_threads("auto", since=since) == 2
    assert pick_threads("auto", since=None, environ={}) == 4  # nothing measured: every core


def test_a_run_started_beside_a_busy_process_takes_the_other_cores_and_its_resume_keeps_them(tmp_path):
    """Through the real CLI: a process that keeps one core busy while the run starts."""
    usable = len(os.sched_getaffinity(0))
    if usable < 2:
        pytest.skip("one usable core: there is nothing to share")
    run_dir = tmp_path / "run"
    base = [arg for arg in TINY if not arg.startswith("trainer.num_threads")]
    args = [*base, "schedule=cosine", "schedule.total_steps=16", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run_cli("trainer", args, fresh=True)  # its start (CPU time before the run) is what is measured
    finally:
        hog.kill()
        hog.wait()
    assert OmegaConf.load(run_dir / "config.yaml").trainer.num_threads == usable - 1
    run_cli("trainer", [*args[:-2], "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", "trainer.resume=auto"], fresh=True)
    assert OmegaConf.load(run_dir / "config.yaml").trainer.num_threads == usable - 1  # its checkpoint's, not the free cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "trainer", *args[:-1], f"hydra.run.dir={tmp_path / 'env'}"],
                          cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.load(tmp_path / "env" / "config.yaml").trainer.num_threads == 1
