"""Checkpoints: atomic writes, verified loads, and the RNG state that makes a resume exact.

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True`` (no
pickled code runs on load). It carries a SHA-256 digest of its own contents, checked on load, so
a flipped byte in a tensor is an error rather than a quietly different model. Writes go to a
temporary file (mode 0666 less the umask, like every other file of the run) that is fsync'ed
and renamed over the target, so a crash mid-write leaves the previous ``last.pt`` intact; a temp
file such a crash leaves behind is removed when the next run starts in the directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import secrets
import shutil
import signal
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from trainer.errors import ConfigError, NoSpace, format_bytes

FORMAT = "trainer-checkpoint/1"
REQUIRED = ("format", "update", "model", "optimizer", "scaler", "schedule", "rng", "config")
TEMP_GLOB = ".*.pt.*.tmp"  # what save_atomic names its temp files: .last.pt.<hex>.tmp
#: Test hook: ``N:B`` makes the N-th checkpoint write (1-based) of this process SIGKILL itself after
#: B bytes of its temp file; a B past the file's end kills it after the other names (best.pt, the
#: numbered copy) are published and before last.pt is replaced.
KILL_HOOK = "TRAINER_TEST_KILL_IN_SAVE"
_writes = 0


def rng_state() -> dict[str, Any]:
    """Python's and torch's generator states (every CUDA device's too, when present)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest_into(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        h.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(b"{")
        for key, item in value.items():
            _digest_into(h, key)
            _digest_into(h, item)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"(" if isinstance(value, tuple) else b"[")
        for item in value:
            _digest_into(h, item)
        h.update(b")")
    else:  # str, int, float, bool, None: repr is exact and tells the types apart
        h.update(f"{type(value).__name__} {value!r};".encode())


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over everything in ``state`` but its ``checksum``: every tensor's dtype, shape and
    bytes and every other value, in the dict's order (which ``torch.save`` keeps)."""
    h = hashlib.sha256()
    _digest_into(h, {key: value for key, value in state.items() if key != "checksum"})
    return h.hexdigest()


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (nested dicts/lists): about a checkpoint's size."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


class _KillAfter:
    """A file wrapper for the :data:`KILL_HOOK` test hook: SIGKILLs this process after ``limit`` bytes."""

    def __init__(self, file: BinaryIO, limit: int) -> None:
        self.file, self.left = file, limit

    def write(self, data: bytes) -> int:
        if len(data) >= self.left:
            self.file.write(data[: self.left])
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.left -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _kill_point() -> int | None:
    """The byte at which the :data:`KILL_HOOK` kills this write, or None (the usual case)."""
    global _writes
    _writes += 1
    hook = os.environ.get(KILL_HOOK)
    if not hook:
        return None
    nth, byte = (int(part) for part in hook.split(":"))
    return byte if nth == _writes else None


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def link_atomic(source: Path, target: Path) -> Path:
    """Make ``target`` another name of ``source``'s file (same bytes, no second write), replacing
    any old ``target`` in one step; returns the temp name used, gone once this returns."""
    link = _temp_path(target)
    os.link(source, link)
    os.replace(link, target)
    return link


def save_atomic(state: dict[str, Any], path: Path, *, also: Sequence[Path] = ()) -> None:
    """Write ``state`` (with its checksum) to ``path``, so that ``path`` is always either the old
    or the new file; each of ``also`` (e.g. ``best.pt``) gets the same bytes (a hard link), and all
    of them are in place before ``path`` is replaced: a crash in between leaves the old ``path``,
    whose resume writes them again.

    A full disk raises :class:`~trainer.errors.NoSpace` with the space needed and free; the old
    files stay as they were.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "checksum": state_digest(state)}
    kill_at = _kill_point()
    tmp = _temp_path(path)
    written: list[Path] = [tmp]
    try:
        # os.open applies the umask (mkstemp would make it 0600, unreadable to a shared group).
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            torch.save(state, f if kill_at is None else _KillAfter(f, kill_at))
            f.flush()
            os.fsync(f.fileno())
        for other in also:
            written.append(link_atomic(tmp, other))
        if kill_at is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except BaseException as error:
        for name in written:
            name.unlink(missing_ok=True)
        _raise_if_out_of_space(error, path.parent, needed=tensor_bytes(state))
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the renames themselves durable
    finally:
        os.close(dir_fd)


def _raise_if_out_of_space(error: BaseException, directory: Path, *, needed: int) -> None:
    """A failed write on a full disk: torch reports it as ENOSPC or, writing through its zip
    writer, as a RuntimeError ("unexpected pos"); what is free tells them apart from other errors."""
    free = shutil.disk_usage(directory).free
    no_space = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if no_space or (isinstance(error, (OSError, RuntimeError)) and free < needed):
        raise NoSpace(directory, needed=needed, free=free) from None


def expected_checkpoint_bytes(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict[str, Any] | None, *,
    ema: bool = False,
) -> int:
    """About how large this run's checkpoints will be: a resumed checkpoint's own tensors, or the
    model's plus the optimizer state its first step makes (Adam's two moments, SGD's momentum) and,
    with ``ema`` (``trainer.ema_decay``), the weight average, another copy of the model (which a
    resumed checkpoint from a run without one lacks)."""
    if checkpoint is not None:
        return tensor_bytes(checkpoint) + (tensor_bytes(model.state_dict()) if ema and checkpoint.get("ema") is None else 0)
    defaults = optimizer.defaults
    slots = 2 + bool(defaults.get("amsgrad")) if "betas" in defaults else int(bool(defaults.get("momentum")))
    return tensor_bytes(model.state_dict()) * (1 + slots + ema)


def check_free_space(run_dir: Path, checkpoint_bytes: int, *, keep_last_n: int) -> None:
    """Before training: raise NoSpace unless ``run_dir``'s disk has room for the checkpoints the
    run keeps at once (``last.pt``, ``best.pt``, ``keep_last_n`` numbered copies, the newest of
    which is ``last.pt``'s own file) and the one being written, less the files already there."""
    at_once = max(keep_last_n, 1) + 2
    held = len({path.stat().st_ino for path in run_dir.glob("*.pt") if path.is_file()})
    needed = checkpoint_bytes * max(1, at_once - held)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise NoSpace(run_dir, needed=needed, free=free, what=f"the checkpoints this run keeps ({format_bytes(checkpoint_bytes)} each)")


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temp files a killed checkpoint write left in ``run_dir``; returns them.
    Only safe while this process holds the run directory's lock (:mod:`trainer.rundir`)."""
    stale = sorted(run_dir.glob(TEMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def not_ours(path: Path, error: Exception, key: str = "trainer.resume") -> ConfigError:
    """Why torch refused ``path``, without torch's advice to retry with ``weights_only=False``
    (that would run whatever code the file holds)."""
    blocked = re.search(r"GLOBAL (\S+)", str(error))
    if blocked:
        why = f"it asks to load {blocked.group(1)}, and a checkpoint holds only tensors and plain data"
    else:
        why = "it is damaged, truncated or another program's file"
    return ConfigError(key, f"{path} is not a checkpoint of ours: {why}")


def _check_header(path: Path, state: dict[str, Any], key: str) -> None:
    update = state["update"]
    if type(update) is not int or update < 0:
        raise ConfigError(key, f"{path} has a forged or broken header: update={update!r} "
                                            "is not a count of updates")


def load_checkpoint(path: Path, key: str = "trainer.resume") -> dict[str, Any]:
    """Read and verify a checkpoint; any unreadable, damaged, truncated or foreign file is a
    ConfigError naming ``key`` (the setting that pointed at it)."""
    if path.exists() and not path.is_file():
        raise ConfigError(key, f"{path} is not a file: move it away to start afresh, or point "
                                            "trainer.resume at a checkpoint")
    if not path.is_file():
        raise ConfigError(key, f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip errors, unpickling refusals, short reads: all mean "not ours"
        raise not_ours(path, error, key) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(key, f"{path} is not a trainer checkpoint (expected format {FORMAT})")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise ConfigError(key, f"{path} lacks {', '.join(missing)}: it is incomplete")
    # Checkpoints written before the checksum was added have none; every later one is checked.
    if "checksum" in state and state_digest(state) != state["checksum"]:
        raise ConfigError(key, f"{path} is damaged: its contents do not match the checksum "
                                            "written with them; resume from another checkpoint (best.pt, step-*.pt)")
    _check_header(path, state, key)
    return state


def prune_numbered(run_dir: Path, keep: int) -> None:
    """Keep only the ``keep`` newest ``step-*.pt`` checkpoints in ``run_dir``."""
    numbered = sorted(run_dir.glob("step-*.pt"))
    for old in numbered[: max(len(numbered) - keep, 0)]:
        old.unlink()
