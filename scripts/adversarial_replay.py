"""Replays a hostile user's inputs through the real CLI and counts which keep the promise: bad
input is one ``error:`` line, exit code 2 and nothing written, before any training; data that fails
mid-run is one line naming it, exit 2, with ``last.pt`` intact; a resume that would splice two runs
is refused in one line. Every case is also a test (tests/test_combinations.py,
tests/data/test_bad_data.py, tests/test_bad_input.py, tests/test_resume.py, tests/test_sweeps.py,
tests/test_sample.py); this script tallies them in one place for the figures in a closing note.

    python scripts/adversarial_replay.py [--json docs/bench/adversarial.json]

About 60 processes, one after another (about 5 minutes on 2 cores). Prints one row per case and
the count that behaved as promised.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUIET = ["trainer.num_threads=1", "logger.progress_bar=false"]
TINY = [*QUIET, "data=synthetic", "model=mlp", "data.train_size=256", "data.val_size=64", "data.batch_size=32",
        "trainer.max_epochs=2"]
REGRESSION = [*QUIET, "data=torch_dataset", "+data.train._target_=tests.userpkg.odd.regression", "+data.train.size=64",
              "data.batch_size=16", "model=target", "+model._target_=tests.userpkg.odd.Linear",
              "loss._target_=torch.nn.MSELoss", "trainer.max_epochs=2"]
WITH_VAL = ["+data.val._target_=tests.userpkg.odd.regression", "+data.val.size=16"]
FAULTY = "tests.data.test_bad_data.Faulty"
#: The first part of a run to resume: 4 of its schedule's 16 updates.
PART = ["schedule.total_steps=16", "trainer.max_steps=4"]


@dataclass
class Case:
    """One input: ``python -m MODULE ARGS`` in ``work`` (``{work}`` in args is replaced), and what
    the promise says it must give: ``refused`` (before anything is written: ``out`` must not
    exist) or ``named`` (mid-run: ``out/metrics.json`` says failed; the tests check ``last.pt``)."""

    name: str
    module: str
    args: list[str]
    expect: str = "refused"
    text: str = ""  # a part the one line must hold
    setup: Callable[[Path], None] | None = None
    out: str = "run"  # the directory the case must leave absent (refused) or holding last.pt (named)
    notes: list[str] = field(default_factory=list)


def faulty(size: int, **faults: int) -> str:
    return "{" + ",".join([f"_target_:{FAULTY}", f"size:{size}", *(f"{k}:{v}" for k, v in faults.items())]) + "}"


def bad_data(train: str, val: str, workers: int = 0) -> list[str]:
    return [*QUIET, "model=mlp", "data=torch_dataset", f"data.train={train}", f"data.val={val}", "data.num_classes=2",
            "data.batch_size=8", f"data.num_workers={workers}", "schedule=constant", "trainer.max_epochs=1",
            "trainer.checkpoint_every_n_steps=1"]


def first_run(extra: list[str]) -> Callable[[Path], None]:
    """Setup: a finished TINY run in ``work/run`` (for resume cases), with ``extra`` overrides."""
    def run(work: Path) -> None:
        cli("trainer", [*TINY, *extra, f"hydra.run.dir={work / 'run'}"], check=True)
    return run


def nan_weights(work: Path) -> None:
    import torch
    first_run([])(work)
    weights = torch.load(work / "run" / "last.pt", weights_only=True)["model"]
    weights["4.bias"][0] = float("nan")
    torch.save(weights, work / "nan.pt")
    (work / "run").rename(work / "source")


def image_folders(extra_val_class: bool = False, damaged: bool = False) -> Callable[[Path], None]:
    def make(work: Path) -> None:
        from PIL import Image

        from tests.data.test_bad_data import write_bad_images
        from tests.data.test_map_style import write_image_folder
        if damaged:
            write_bad_images(work / "train", per_class=8)
        else:
            write_image_folder(work / "train", per_class=8, size=(16, 16))
        write_image_folder(work / "val", per_class=2, size=(16, 16), seed=1)
        if extra_val_class:
            (work / "val" / "bird").mkdir()
            Image.new("RGB", (16, 16)).save(work / "val" / "bird" / "0.png")
    return make


def bad_yaml(work: Path) -> None:
    (work / "my_conf" / "model").mkdir(parents=True)
    (work / "my_conf" / "model" / "bad.yaml").write_text("name: mlp\nhidden_sizes: [16]\ndropout: 0.1: 2\n")


IMAGES = [*QUIET, "data=image_folder", "data.train_dir={work}/train", "data.val_dir={work}/val", "data.image_size=8",
          "model=mlp", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "schedule=constant",
          "trainer.checkpoint_every_n_steps=1"]


def cases() -> list[Case]:
    combos = [
        ("val/acc watched on a regression", [*REGRESSION, *WITH_VAL, "trainer.early_stopping.patience=2",
                                             "trainer.early_stopping.monitor=val/acc", "trainer.early_stopping.mode=max"]),
        ("plateau on val/acc of a regression", [*REGRESSION, *WITH_VAL, "schedule=plateau", "schedule.monitor=val/acc",
                                                "schedule.mode=max"]),
        ("early stopping without validation", [*REGRESSION, "trainer.early_stopping.patience=2"]),
        ("plateau without validation", [*REGRESSION, "schedule=plateau"]),
        ("val/acc with mode=min", [*TINY, "trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/acc"]),
        ("every module frozen at update 0", [*TINY, "trainer.unfreeze=[{at: 4, modules: ['1','4']}]"]),
        ("unfreeze stage after the last update", [*TINY, "trainer.unfreeze=[{at: 100, modules: ['1']}]"]),
        ("spike window longer than the run", [*TINY, "trainer.grad_spike.factor=10", "trainer.grad_spike.window=100"]),
        ("module twice in layer_order", [*TINY, "optimizer.layer_decay=0.5", "optimizer.layer_order=['1','4','1']"]),
        ("shadowed param_groups rule", [*TINY, "optimizer.param_groups=[{match: '*weight', lr_scale: 0.5}, "
                                               "{match: '1.weight', lr_scale: 0.1}]"]),
        ("loss not connected to the model", [*TINY, "model=target", "+model._target_=tests.userpkg.odd.Detached"]),
        ("model builder calls sys.exit", [*TINY, "model=target", "+model._target_=tests.userpkg.odd.exiting"]),
    ]
    out = [Case(f"combination: {name}", "trainer", [*args, "hydra.run.dir={work}/run"]) for name, args in combos]
    out.append(Case("combination: init_from weights with NaN", "trainer",
                    [*TINY, "trainer.init_from={work}/nan.pt", "hydra.run.dir={work}/run"], setup=nan_weights))
    data = [
        ("item 0 of val another shape", faulty(64), faulty(16, reshape_at=0), "refused"),
        ("item 0 label out of range", faulty(64, label_at=0), faulty(16), "refused"),
        ("item 1 raises", faulty(64, raise_at=1), faulty(16), "refused"),
        ("train item 37 raises", faulty(64, raise_at=37), faulty(16), "named"),
        ("train item 40 of another shape", faulty(64, reshape_at=40), faulty(16), "named"),
        ("train item 50 label out of range", faulty(64, label_at=50), faulty(16), "named"),
        ("val item 5 of another shape", faulty(64), faulty(16, reshape_at=5), "named"),
    ]
    for name, train, val, expect in data:
        for workers in (0, 2):
            out.append(Case(f"data: {name} ({workers} workers)", "trainer",
                            [*bad_data(train, val, workers), "hydra.run.dir={work}/run"], expect=expect))
    out += [
        Case("data: val class training lacks", "trainer", [*IMAGES, "hydra.run.dir={work}/run"],
             setup=image_folders(extra_val_class=True), text="data.val_dir"),
        Case("data: truncated JPEG / text named .jpg mid-run", "trainer", [*IMAGES, "hydra.run.dir={work}/run"],
             expect="named", setup=image_folders(damaged=True), text=".jpg"),
    ]
    for key, value in [("seed", "1"), ("data.noise", "0.5"), ("model.dropout", "0.3"), ("trainer.clip_grad_norm", "5"),
                       ("trainer.label_smoothing", "0.1"), ("loss._target_", "torch.nn.CrossEntropyLoss")]:
        out.append(Case(f"resume with another {key}", "trainer",
                        [*TINY, "schedule.total_steps=16", "trainer.max_steps=16", f"{key}={value}",
                         "trainer.resume=auto", "hydra.run.dir={work}/run"],
                        setup=first_run(PART), text=key, out="-"))
    out += [
        Case("tools: bad YAML in --config-dir", "trainer", ["--config-dir", "{work}/my_conf", *TINY, "model=bad",
                                                            "hydra.run.dir={work}/run"], setup=bad_yaml, text="bad.yaml:3"),
        Case("tools: preview with bad YAML", "trainer.preview", ["--config-dir", "{work}/my_conf", "model=bad",
                                                                 "hydra.run.dir={work}/run"], setup=bad_yaml),
        Case("tools: compare on an empty directory", "trainer.compare", ["{work}"], out="{work}/report.md"),
        Case("tools: compare on one run's directory", "trainer.compare", ["{work}/run"], setup=first_run([]),
             out="run/report.md"),
        Case("tools: sample on a missing directory", "trainer.sample", ["{work}/nothing"], out="nothing"),
        Case("tools: preview -m with a refused job", "trainer.preview",
             ["-m", "optimizer.lr=0.01,-1", "hydra.sweep.dir={work}/sweep"], out="sweep/1_optimizer.lr=-1"),
    ]
    return out


def cli(module: str, args: list[str], *, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise SystemExit(f"setup failed: {module} {' '.join(args)}\n{proc.stderr}")
    return proc


def judge(case: Case, proc: subprocess.CompletedProcess, work: Path) -> str:
    """``as promised`` or what broke it."""
    lines = proc.stderr.strip().splitlines()
    if "Traceback" in proc.stderr + proc.stdout:
        return "traceback"
    if proc.returncode == 0:
        return "silent (exit 0)"
    if proc.returncode != 2:
        return f"exit {proc.returncode}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"{len(lines)} lines on stderr"
    if case.text and case.text not in lines[0]:
        return f"line lacks {case.text!r}"
    out = Path(case.out.replace("{work}", str(work))) if case.out.startswith("{work}") else work / case.out
    if case.expect == "refused" and case.out != "-" and out.exists():
        return f"left {out.relative_to(work)}"
    if case.expect == "named" and '"status": "failed"' not in (out / "metrics.json").read_text():
        return "metrics.json does not say failed"
    return "as promised"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for case in cases():
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if case.setup is not None:
                case.setup(work)
            proc = cli(case.module, [a.replace("{work}", str(work)) for a in case.args])
            verdict = judge(case, proc, work)
        rows.append({"case": case.name, "verdict": verdict, "exit": proc.returncode,
                     "line": (proc.stderr.strip().splitlines() or [""])[-1][:200]})
        print(f"{verdict:<20} {case.name}", flush=True)
    kept = sum(row["verdict"] == "as promised" for row in rows)
    print(f"{kept} of {len(rows)} as promised")
    if args.json:
        args.json.write_text(json.dumps({"kept": kept, "tried": len(rows), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
