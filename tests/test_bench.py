"""Smoke test of the overhead benchmark: it runs and reports; no timing is asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from trainer.data.fashion_mnist import DEBIAN_DIR


def test_bench_runs_the_cpu_case(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "scripts/bench.py", "--cases", "mlp_cpu", "--updates", "5", "--warmup", "1", "--repeats", "1",
         "--json", str(out), "--no-lightning"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )
    report = json.loads(out.read_text())
    case = report["cases"]["mlp_cpu"]
    assert set(case) == {"raw", "harness", "ratio", "ratio_min", "ratio_max"}
    assert case["raw"]["updates_per_s"] > 0 and case["harness"]["updates_per_s"] > 0
    # one repeat: the paired ratio is exactly harness rate / raw rate
    assert case["ratio"] == pytest.approx(case["harness"]["updates_per_s"] / case["raw"]["updates_per_s"])
    assert case["harness"]["examples_per_s"] == case["harness"]["updates_per_s"] * 64


def test_bench_times_one_and_two_processes(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "scripts/bench.py", "--cases", "mlp_cpu", "--worlds", "1", "2", "--updates", "20", "--warmup",
         "10", "--repeats", "1", "--json", str(out), "--set", "trainer.num_threads=1"],
        cwd=REPO, check=True, capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    worlds = json.loads(out.read_text())["worlds"]["mlp_cpu"]
    assert set(worlds) == {"1", "2"} and all(w["updates_per_s"] > 0 for w in worlds.values())


SHRUNK_GPT = ["--cases", "gpt", "--device", "cpu", "--updates", "3", "--warmup", "1", "--repeats", "1", "--set", "model.n_layer=1",
              "model.n_embd=32", "model.n_head=2", "model.block_size=16", "data.batch_size=4"]


def test_bench_runs_the_gpt_case_shrunk_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "scripts/bench.py", *SHRUNK_GPT, "--json", str(out), "--no-lightning"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )
    report = json.loads(out.read_text())
    harness = report["cases"]["gpt"]["harness"]
    assert report["overrides"][-1] == "data.batch_size=4" and report["lightning"] is None
    assert harness["tokens_per_s"] == pytest.approx(harness["updates_per_s"] * 4 * 16)


def test_bench_adds_a_lightning_column_when_lightning_is_installed(tmp_path):
    pytest.importorskip("lightning")
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "scripts/bench.py", *SHRUNK_GPT, "--json", str(out)],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )
    case = json.loads(out.read_text())["cases"]["gpt"]
    lightning = case["lightning"]
    assert lightning["updates_per_s"] > 0
    assert case["lightning_ratio"] == pytest.approx(lightning["updates_per_s"] / case["raw"]["updates_per_s"])


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist")
def test_bench_job_runs_the_default_job_shortened_on_every_side(tmp_path):
    out = tmp_path / "job.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench_job.py", "--pairs", "1", "--max-steps", "10", "--json", str(out)],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(out.read_text())
    sides = report["sides"]
    assert {"trainer", "handwritten"} <= set(sides) and report["max_steps"] == 10
    for side in sides.values():
        (run,) = side["runs"]
        assert run["wall_s"] == side["median_wall_s"] > 0
        assert 0 <= run["val/acc"] <= 1 and 0 < run["val/loss"] < 2 * math.log(10)  # about chance after 10 updates
    trainer_ratio = report["ratio_to_handwritten"]["trainer"]
    assert trainer_ratio["median"] == pytest.approx(sides["trainer"]["median_wall_s"] / sides["handwritten"]["median_wall_s"])
    assert trainer_ratio["geometric_mean"] == pytest.approx(trainer_ratio["median"])  # one pair: its own ratio
    assert "| trainer |" in proc.stdout and "| handwritten |" in proc.stdout


def test_bench_startup_times_every_command_against_importing_torch(tmp_path):
    out = tmp_path / "startup.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench_startup.py", "--rounds", "1", "--json", str(out)],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=600,
    )
    walls = json.loads(out.read_text())["wall_s"]
    assert {'python -c "import torch"', "python -m trainer --cfg job", "python -m trainer.preview"} <= set(walls)
    assert all(len(times) == 1 and times[0] > 0 for times in walls.values())
    assert '| `python -c "import torch"` |' in proc.stdout and "| 1.00× |" in proc.stdout
