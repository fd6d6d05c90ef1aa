"""Checkpoint files: their mode, their checksum, what a damaged or foreign file says, a full disk."""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import subprocess
import sys

import pytest
import torch

import trainer.app.run
from tests.conftest import REPO, TINY, compose_config
from trainer.app.run import train
from trainer.controls import Controls
from trainer.controls.ema import WeightEMA
from trainer.errors import ConfigError, NoSpace
from trainer.rundir.atomic import save_atomic, tensor_bytes
from trainer.rundir.checkpoint import (
    FORMAT,
    LAYOUT_KEYS,
    check_free_space,
    expected_checkpoint_bytes,
    load_checkpoint,
    rng_state,
)
from trainer.rundir.summary import read_summary

WEIGHTS = torch.arange(1000, dtype=torch.float32) + 0.5  # bytes that occur once in the file


def a_checkpoint(**extra) -> dict:
    """The smallest dict load_checkpoint accepts, holding WEIGHTS: every key of the layout."""
    state = {key: {} for key in LAYOUT_KEYS}
    return {**state, "format": FORMAT, "update": 3, "model": {"w": WEIGHTS.clone()}, "rng": rng_state(),
            "config": {"seed": 0}, **extra}


@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    yield set_umask
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_checkpoints_get_the_mode_every_other_file_gets(tmp_path, umask, mask):
    umask(mask)
    save_atomic(a_checkpoint(), tmp_path / "last.pt", also=[tmp_path / "best.pt"])
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"last.pt": 0o666 & ~mask, "best.pt": 0o666 & ~mask, "config.yaml": 0o666 & ~mask}


def test_a_few_flipped_bytes_inside_a_tensor_are_caught(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(a_checkpoint(), path)
    data = bytearray(path.read_bytes())
    at = data.find(WEIGHTS.numpy().tobytes())
    assert at > 0
    data[at + 400 : at + 404] = b"\xff\x7f\x00\x7e"
    path.write_bytes(data)
    # torch itself reads the damaged file without complaint: only the checksum tells
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], WEIGHTS)
    with pytest.raises(ConfigError, match="damaged: its contents do not match the checksum"):
        load_checkpoint(path)


def test_a_forged_header_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(a_checkpoint(), path)
    forged = torch.load(path, weights_only=True)
    forged["update"] = -7
    torch.save(forged, path)  # edited without the checksum
    with pytest.raises(ConfigError, match="damaged"):
        load_checkpoint(path)
    save_atomic(forged, path)  # with a checksum made for it
    with pytest.raises(ConfigError, match=r"forged or broken header: update=-7"):
        load_checkpoint(path)


class RunsCode:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_garbage_and_a_malicious_pickle_are_not_ours_and_never_run(tmp_path):
    marker = tmp_path / "it-ran"
    files = {"garbage.pt": random.Random(0).randbytes(4000), "pickle.pt": pickle.dumps(RunsCode(marker))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"format": FORMAT, "model": RunsCode(marker)}, tmp_path / "zip.pt")
    for name in ["garbage.pt", "pickle.pt", "zip.pt"]:
        with pytest.raises(ConfigError) as error:
            load_checkpoint(tmp_path / name)
        message = str(error.value)
        assert f"{tmp_path / name} is not a checkpoint of ours" in message
        assert "weights_only" not in message and "\n" not in message
    assert "it asks to load posix.system" in message
    assert not marker.exists()


def test_a_last_pt_that_is_a_directory_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(ConfigError, match=f"{tmp_path / 'last.pt'} is not a file"):
        train(compose_config("schedule=cosine", "trainer.max_epochs=1", "trainer.resume=auto"), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # nothing trained or written


def test_a_full_disk_keeps_the_old_checkpoint_and_says_how_much_was_needed(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic(a_checkpoint(), path)
    before = path.read_bytes()
    save = torch.save

    def disk_fills(obj, f, *args, **kwargs):  # as the kernel does: some bytes land, then ENOSPC
        f.write(b"x" * 100)
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills)
    with pytest.raises(NoSpace) as error:
        save_atomic(a_checkpoint(), path, also=[tmp_path / "best.pt"])
    monkeypatch.setattr(torch, "save", save)
    free = shutil.disk_usage(tmp_path).free
    assert error.value.needed == 4000 + 5056  # the float32 weights and torch's CPU generator state
    assert abs(error.value.free - free) < 1e6
    assert str(error.value).startswith(f"no space left in {tmp_path}: 9.1 kB needed for a checkpoint, ")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (needs root and a kernel that lets this process mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_run_bigger_than_its_disk_is_refused_before_it_trains(small_disk):
    # 16*2000+2000+2000*4+4 = 42,004 parameters: 168 kB, 504 kB with AdamW's moments; a run keeps
    # up to three (last, best, the one being written): 1.5 MB > 1 MB.
    run_dir = small_disk / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", *TINY, "schedule=cosine", "model.hidden_sizes=[2000]", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.startswith(f"error: no space left in {run_dir}: 1.5 MB needed for the checkpoints "
                                  "this run keeps (504.0 kB each), 1.0 MB free;")
    assert proc.stderr.count("\n") == 1 and not run_dir.exists()


def fill(path, *, leave: int) -> None:
    """Write ``path`` until the disk is full, then give back ``leave`` bytes (room for metrics.json)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    os.close(fd)


def test_a_disk_that_fills_during_the_run_keeps_the_last_checkpoint_and_records_the_error(small_disk):
    """Another process fills the disk while the run trains (the start check passed)."""
    run_dir = small_disk / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", *TINY, "schedule=cosine", "trainer.max_epochs=400", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # epoch 2's line comes after epoch 1's checkpoint was written
        if "after 16 updates" in line:
            fill(small_disk / "filler", leave=8192)
            break
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 5, stderr
    assert stderr.startswith(f"error: no space left in {run_dir}: ") and stderr.count("\n") == 1
    assert "needed for a checkpoint" in stderr
    state = load_checkpoint(run_dir / "last.pt")
    assert state["update"] % 8 == 0 and state["update"] >= 8
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and summary["error"].startswith("NoSpace: no space left in")
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("ema", [False, True])
def test_the_free_space_check_expects_the_checkpoint_the_run_writes(tmp_path, monkeypatch, ema):
    """The size the run checks for before training (its model, AdamW's two moments and, with
    trainer.ema_decay, the average) against the tensors of the last.pt it then writes."""
    checked = []

    def check(run_dir, checkpoint_bytes, **kwargs):
        checked.append(checkpoint_bytes)
        return check_free_space(run_dir, checkpoint_bytes, **kwargs)

    monkeypatch.setattr(trainer.app.run, "check_free_space", check)
    train(compose_config("schedule=cosine", "trainer.max_epochs=1", *(["trainer.ema_decay=0.9"] if ema else [])), tmp_path)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert ("ema" in saved["controls"]) == ema
    written = tensor_bytes(saved["model"]) + tensor_bytes(saved["optimizer"]["state"]) + tensor_bytes(saved["controls"])
    steps = 4 * len(saved["optimizer"]["state"])  # Adam's float32 step count per parameter, not in the estimate
    assert checked == [written - steps]


def test_the_expected_size_counts_the_controls_states_and_a_resume_that_starts_an_ema():
    model = torch.nn.Linear(10, 10)  # 110 float32 numbers: 440 bytes
    optimizer = torch.optim.AdamW(model.parameters())
    assert expected_checkpoint_bytes(model, optimizer, None) == 440 * 3  # the model and Adam's two moments
    resumed = {"optimizer": {"state": {0: {"exp_avg": torch.zeros(10, 10)}}, "param_groups": []}}
    assert expected_checkpoint_bytes(model, optimizer, resumed) == 440 + 400  # the checkpoint's own moments
    ema = WeightEMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)  # the weights a resume restored, after the EMA was built
    ema.load_state_dict(None)  # its checkpoint's run had no EMA: it starts from the restored weights
    assert torch.equal(ema.state_dict()["weight"], model.weight)
    assert expected_checkpoint_bytes(model, optimizer, resumed, controls=Controls([ema])) == 440 + 400 + 440