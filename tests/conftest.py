"""Shared helpers: run the real CLI (a forked interpreter that imported it once, or a fresh subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.forked_cli import ForkedCLI

REPO = Path(__file__).resolve().parent.parent

# Every test run: no progress bar, every update logged, one thread (on tensors this small, a
# second OpenMP thread costs more than it gives).
QUIET = ["trainer.num_threads=1", "logger.progress_bar=false", "logger.log_every_n_steps=1"]
# A tiny synthetic job: 256 examples / batch 32 = 8 updates per epoch.
TINY = [*QUIET, "data=synthetic", "model=mlp", "data.train_size=256", "data.val_size=64", "data.batch_size=32"]


_forked: ForkedCLI | None = None  # started at the first run_cli that can use it, closed at the session's end


def run_cli(
    module: str, args: list[str], *, check: bool = True, env: dict[str, str] | None = None, fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` from the repo root, as a user would (``env`` adds variables).

    In a fork of one interpreter that imported the CLI once (:mod:`tests.forked_cli`), unless
    ``fresh`` or ``env`` asks for a new interpreter: what a fork cannot reproduce is a fresh start
    (which modules it imports, variables read at import)."""
    global _forked
    environ = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", **(env or {})}
    if fresh or env is not None:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300
        )
    else:
        _forked = _forked or ForkedCLI(REPO)
        proc = _forked.completed(module, args, environ)
    if check and proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def pytest_sessionfinish(session, exitstatus) -> None:
    if _forked is not None:
        _forked.close()


@pytest.fixture
def train_cli(tmp_path):
    """Run ``python -m trainer`` with the tiny job into a fresh run dir; returns (proc, run_dir)."""

    def run(*overrides: str, check: bool = True):
        run_dir = tmp_path / "run"
        proc = run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", *overrides], check=check)
        return proc, run_dir

    return run


def compose_config(*overrides: str, base: list[str] = TINY):
    """The config ``python -m trainer`` would get for ``base + overrides`` (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    from trainer.components import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*base, *overrides])
