"""Start-up imports only what a command needs.

Asserted on the names of the modules each real command imported (``python -X importtime``, as
``PYTHONPROFILEIMPORTTIME=1``, lists every one on stderr), never on a time, so it cannot flake:
``--help``, ``--cfg job`` and a config error each used to import torchvision (and the
``torch._dynamo`` it pulls in) and matplotlib, seconds before anything could happen.
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys

import pytest

import trainer.__main__ as trainer_cli
from tests.conftest import REPO, TINY, run_cli
from trainer.app.cli import run_as_process
from trainer.errors import ConfigError
from trainer.rundir.events import read_scalars

#: Each takes from a few tenths of a second to seconds to import, and no command below needs it.
HEAVY = (
    "torchvision",  # only resnet18 (and a dataset download) uses it
    "torch._dynamo",  # torchvision imports it; torch's own optimizers import it when first built
    "matplotlib",  # only what draws: the preview, the range test's plot, a sweep's report
    "tensorboard.compat.tensorflow_stub",  # TensorBoard's reader: fsspec, boto3 where installed
    "optuna", "joblib", "submitit",  # sweep plugins' libraries: only in sweeps that use them
    # The [hf] extra, seconds to import (transformers alone pulls in hundreds of modules): only
    # model=hf, model.lora, Hugging Face data and a BPE tokenizer's sampling use them.
    "transformers", "peft", "datasets", "tokenizers", "tiktoken",
)


def import_names(stderr: str) -> set[str]:
    """The modules ``-X importtime`` listed in ``stderr`` (or in a stretch of it)."""
    return set(re.findall(r"import time:[^|]*\|[^|]*\| *(\S+)", stderr))


def imported(module: str, args: list[str], **kwargs) -> tuple[set[str], str]:
    """Run ``python -m module args``; returns the modules it imported and its stderr without them."""
    proc = run_cli(module, args, env={"PYTHONPROFILEIMPORTTIME": "1"}, **kwargs)
    lines = proc.stderr.splitlines()
    modules = import_names(proc.stderr)
    assert "hydra" in modules  # the list is real: every command imports Hydra
    return modules, "\n".join(line for line in lines if not line.startswith("import time:"))


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    """The modules of :data:`HEAVY` (or their submodules) in ``modules``, besides ``allowed``."""
    return sorted(m for m in modules if _within(m, HEAVY) and not _within(m, allowed))


def test_help_and_cfg_job_import_neither_torch_nor_anything_heavy():
    for module, args in [("trainer", ["--help"]), ("trainer", ["--cfg", "job"]), ("trainer.preview", ["--help"]),
                         ("trainer.preview", ["--cfg", "job", "schedule=onecycle"])]:
        modules, _ = imported(module, args)
        assert "torch" not in modules, (module, args)
        assert heavy(modules) == [], (module, args)


def test_importing_the_package_and_what_a_run_builds_imports_no_hugging_face_library():
    """The named-batch path (trainer.data.named, the losses, model=hf's module) is imported by every
    run; transformers and peft only when a run builds such a model."""
    code = ("import sys, trainer, trainer.app.run, trainer.models.hf, trainer.training.step\n"
            "print(sorted(m for m in ('transformers', 'peft', 'datasets', 'tokenizers', 'tiktoken') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_config_error_imports_nothing_heavy(tmp_path):
    run_dir = tmp_path / "run"
    modules, stderr = imported("trainer", ["optimizer.lr=-1", f"hydra.run.dir={run_dir}"], check=False)
    assert stderr.strip() == "error: optimizer.lr: got -1; expected a finite number > 0"
    assert heavy(modules) == []
    assert not run_dir.exists()


#: TensorBoard's event reader: only a resumed run's summary reads its events (a fresh run's it logged itself).
READER = "tensorboard.backend.event_processing"


def test_a_small_run_imports_no_torchvision_and_matplotlib_only_once_it_has_started(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*TINY, "logger.progress_bar=true", "trainer.max_steps=2", "schedule=constant",
                               f"hydra.run.dir={run_dir}"], env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert (run_dir / "last.pt").is_file()
    # The progress bar's first line ("0/2") is drawn as training starts; what is imported after it
    # delays no update: a completed run draws lr.png (matplotlib) and writes its HParams summary.
    before, after = proc.stderr.split("0/2", 1)
    started_with = import_names(before)
    assert "torch" in started_with
    # torch's optimizers import torch._dynamo (torch.optim.Optimizer's methods are dynamo-disabled).
    assert heavy(started_with, allowed=("torch._dynamo",)) == []
    imported_after = import_names(after)
    assert "matplotlib" in imported_after
    assert (run_dir / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert not any(_within(m, (READER,)) for m in started_with | imported_after)
    # Its summary, without the reader, gives what the event file holds (32-bit floats).
    logged = read_scalars(run_dir)
    for line, (tag, best) in zip(proc.stdout.splitlines()[-3:-1], [("val/loss", min), ("val/acc", max)]):
        points = logged[tag]
        step, value = best(points, key=lambda p: p[1])
        assert line == f"  {tag:<9} final {points[-1][1]:.4f}  best {value:.4f} (after {step} updates)"


def test_a_resumed_runs_summary_reads_its_earlier_validations_from_the_events(tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, "schedule=constant", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"]
    first = run_cli("trainer", [*common, "trainer.max_steps=8"])
    assert first.returncode == 0
    # The second part at 1000x the LR: its validation is the worse, so the best is the first part's.
    again = run_cli("trainer", [*common, "trainer.resume=auto", "trainer.resume_schedule=override", "optimizer.lr=1.0"],
                    env={"PYTHONPROFILEIMPORTTIME": "1"})
    modules = import_names(again.stderr)
    assert any(_within(m, (READER,)) for m in modules)
    points = read_scalars(run_dir)["val/loss"]
    assert [step for step, _ in points] == [8, 16]  # one validation in each part
    step, best = min(points, key=lambda p: p[1])
    assert step == 8
    assert again.stdout.splitlines()[-3] == f"  val/loss  final {points[-1][1]:.4f}  best {best:.4f} (after {step} updates)"


def test_the_preview_imports_no_torch_dynamo_and_writes_the_lrs_a_run_applies(tmp_path):
    """The preview builds the run's real optimizer, without the torch._dynamo import torch's
    optimizers trigger when first built: its lr.csv is the one the run writes as it starts."""
    args = [*TINY, "schedule=onecycle", "optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9",
            "optimizer.lr_scales={4:0.5}", "trainer.max_steps=12"]
    modules, _ = imported("trainer.preview", [*args, f"hydra.run.dir={tmp_path / 'preview'}"])
    assert "torch" in modules and heavy(modules, allowed=("matplotlib",)) == []
    run_cli("trainer", [*args, f"hydra.run.dir={tmp_path / 'run'}"])
    preview = (tmp_path / "preview" / "lr.csv").read_text()
    assert preview == (tmp_path / "run" / "lr.csv").read_text()
    header = preview.splitlines()[0].split(",")
    assert header[:2] == ["update", "t"] and "momentum" in header and len(header) > 4  # groups, scales, momentum


def test_a_process_entry_point_leaves_its_objects_to_the_os_however_it_ends(monkeypatch):
    """The interpreter's final garbage collections took about 1 s of every exit once torch._dynamo
    was imported; the CLI's entry point freezes the heap instead, on success and on exit 2 alike."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # set, run_app would re-raise the error
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append("frozen"))
    run_as_process(lambda: None)
    assert frozen == ["frozen"]

    def config_error() -> None:
        raise ConfigError("optimizer.lr", "got -1; expected a finite number > 0")

    with pytest.raises(SystemExit) as stop:
        run_as_process(config_error)
    assert stop.value.code == 2 and frozen == ["frozen", "frozen"]


def test_the_trainer_command_runs_as_a_process(monkeypatch):
    entered = []
    monkeypatch.setattr(trainer_cli, "run_as_process", entered.append)
    trainer_cli.cli()
    assert entered == [trainer_cli.main]
