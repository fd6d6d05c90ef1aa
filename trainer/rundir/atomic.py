"""Writes that a crash cannot half-finish: a checkpoint (with its checksum) goes to a temporary
file (mode 0666 less the umask, like every other file of the run) that is fsync'ed and renamed
over the target, so the target is always either the old or the new file; a temp file a crash
leaves behind is removed when the next run starts in the directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer.errors import NoSpace
from trainer.files import TEMP_GLOB, temp_path
from trainer.rundir import kill_hook


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


def link_atomic(source: Path, target: Path) -> Path:
    """Make ``target`` another name of ``source``'s file (same bytes, no second write), replacing
    any old ``target`` in one step; returns the temp name used, gone once this returns."""
    link = temp_path(target)
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
    kill = kill_hook.for_this_write()
    tmp = temp_path(path)
    written: list[Path] = [tmp]
    try:
        # os.open applies the umask (mkstemp would make it 0600, unreadable to a shared group).
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            torch.save(state, kill.wrap(f))
            f.flush()
            os.fsync(f.fileno())
        for other in also:
            written.append(link_atomic(tmp, other))
        kill.before_replace()
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


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temp files a killed checkpoint write left in ``run_dir``; returns them.
    Only safe while this process holds the run directory's lock (:mod:`trainer.rundir.lock`)."""
    stale = sorted(run_dir.glob(TEMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
