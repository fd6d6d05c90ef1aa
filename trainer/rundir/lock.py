"""The run directory: checked before any work, held by one run at a time, and removed again when a
bad config made it.

Two jobs in one directory (a double SLURM launch, a repeated command) would mix one run's config
with the other's checkpoints and logs. A run holds an exclusive POSIX lock (``fcntl``) on
``RUN_DIR/.lock`` from before it reads its checkpoint until it ends; the file names the holder's
pid and host for the message a second run prints. The kernel drops the lock of a process that
dies, however it dies (SIGKILL, OOM kill, a node's reboot), so a lock left by a killed run is stale
by construction and the next run takes it over. POSIX locks, unlike ``flock``, are not inherited
by forked DataLoader workers, which could otherwise hold a dead run's lock a while longer, and
they also work on NFS.

Imported by Hydra for every command (its callbacks): nothing here imports torch."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainer.errors import ConfigError, RunDirInUse, refuse

#: Longest file name when the file system does not say (ext4, xfs, btrfs, tmpfs: 255 bytes).
NAME_MAX = 255


class RunDirGuard(Callback):
    """Before Hydra makes ``hydra.run.dir``, note which of its directories do not exist yet (so
    a config error removes exactly those, e.g. ``outputs/DATE/TIME`` and ``outputs/DATE``, and
    never one the user made) and whether a name in it is longer than the file system allows."""

    created: ClassVar[list[Path]] = []  # innermost first
    too_long: ClassVar[ConfigError | None] = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        missing, existing = [], run_dir
        while not _exists(existing):
            missing.append(existing)
            existing = existing.parent
        if not missing and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not any(run_dir.iterdir()):
            # The ranks of one torchrun launch race to make it: another rank may have made it just now.
            missing = [run_dir]
        RunDirGuard.created = missing
        try:
            name_max = os.pathconf(existing, "PC_NAME_MAX")
        except (OSError, ValueError):
            name_max = NAME_MAX
        long_names = [p.name for p in missing if len(p.name.encode()) > name_max]
        RunDirGuard.too_long = ConfigError(
            "hydra.run.dir",
            f"the name {long_names[0][:40]}... is {len(long_names[0].encode())} bytes, longer than the {name_max} "
            f"this file system allows in {existing}: choose a shorter hydra.run.dir",
        ) if long_names else None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up
        return False


def remove_if_empty(directory: Path) -> bool:
    """Remove ``directory`` if it is empty; False if it holds something (or cannot be removed)."""
    try:
        directory.rmdir()
    except OSError:  # not empty (a real run's files) or already gone: leave it
        return False
    return True


def remove_created_run_dir() -> None:
    """Remove the directories of ``hydra.run.dir`` that this run created, while they are empty:
    a bad config writes nothing, not even an empty ``outputs/DATE/``."""
    for directory in RunDirGuard.created:  # innermost first; Hydra may have made only the outer ones
        if _exists(directory) and not remove_if_empty(directory):
            return  # a real run's files: leave it and its parents


LOCK_FILE = ".lock"


def check_writable(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """A ConfigError unless ``run_dir`` is, or can be made as, a directory this process may write in."""
    run_dir = run_dir.absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(key, f"{run_dir} is a file, not a directory: pick another {key}")
    existing = run_dir
    while not existing.exists():  # the nearest ancestor that exists (/ at worst)
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"{existing} is a file, so {run_dir} cannot be made: pick another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{existing} is not writable (a read-only file system, or no permission): "
                               f"pick another {key}")


def _lock(path: Path, run_dir: Path) -> int:
    """Open and lock ``path``; returns its descriptor, or raises RunDirInUse naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "a process that is starting"
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirInUse("hydra.run.dir", f"{run_dir} is in use by another run ({holder}): wait for it "
                                               "to end, or pick another hydra.run.dir") from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the holder removed the file as it ended, after we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Check ``run_dir``, make it, lock it and remove the temp files a killed run left; release it
    on any exit (a directory this made and nothing filled is removed again, as after a config error)."""
    check_writable(run_dir)
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    try:
        fd = _lock(lock, run_dir)
    except BaseException:
        if made:
            remove_if_empty(run_dir)
        raise
    try:
        from trainer.rundir.atomic import remove_stale_temps

        remove_stale_temps(run_dir)
        yield
    finally:
        # Removed before the close that releases it: a run that opened the old file and then locks it
        # sees it was replaced (_lock's inode check).
        lock.unlink(missing_ok=True)
        os.close(fd)
        if made:
            remove_if_empty(run_dir)


class RunDirCheck(Callback):
    """Hydra callback: refuse an unusable run (or sweep) directory with one line and exit 2, before
    Hydra itself would fail to make it with a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(run_dir: str, key: str) -> None:
        try:
            check_writable(Path(run_dir), key)
        except ConfigError as error:
            refuse(error)
