"""Where the Hydra configs live, how sweep jobs are named, and what a config error leaves behind:
one line on stderr, exit code 2, and no directory this run created."""

from __future__ import annotations

import difflib
import gc
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer.errors import ConfigError, one_line

_PACKAGE = Path(__file__).resolve().parent

#: ``conf/`` of a source checkout or editable install, else the copy installed inside the package.
CONFIG_DIR = _PACKAGE.parent / "conf" if (_PACKAGE.parent / "conf" / "config.yaml").exists() else _PACKAGE / "conf"


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


def as_config_error(error: Exception) -> ConfigError:
    """Hydra's and OmegaConf's own config errors (a missing config, a key that does not exist, an
    override that does not parse, an interpolation that does not resolve) as one ConfigError."""
    if isinstance(error, ConfigError):
        return error
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        return ConfigError(group or "config", f"no config {name!r} in {group}/; known: {', '.join(error.options)}")
    if isinstance(error, OverrideParseException):
        return ConfigError(str(error.override).split("=")[0].lstrip("+~"), one_line(error.message))
    # Hydra wraps OmegaConf's error (which names the key) in its own; OmegaConf's may wrap another.
    cause = next((e for e in (error, error.__cause__) if isinstance(e, OmegaConfBaseException)
                  and getattr(e, "full_key", None)), None)
    if cause is not None:
        key = cause.full_key
        parent = getattr(cause, "parent_node", None)
        if "not in struct" in str(cause) and isinstance(parent, DictConfig):
            name = str(key).rsplit(".", 1)[-1]
            close = difflib.get_close_matches(name, [str(k) for k in parent], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"it has {', '.join(str(k) for k in parent)}"
            return ConfigError(str(key), f"no such key; {hint}")
        return ConfigError(str(key), one_line(str(cause).splitlines()[0]))
    return ConfigError("overrides", one_line(error))


def run_app(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point so that every config error, ours or Hydra's, prints one
    line and exits 2 (Hydra's own report is several lines and exits 1) and leaves no directory."""
    user_setting = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of reporting them itself
    try:
        main()
    except (HydraException, OmegaConfBaseException, ConfigError) as error:
        if user_setting == "1":
            raise
        print(f"error: {as_config_error(error)}", file=sys.stderr)
        remove_created_run_dir()
        sys.exit(2)
    except OSError:
        if RunDirGuard.too_long is None:
            raise
        print(f"error: {RunDirGuard.too_long}", file=sys.stderr)
        remove_created_run_dir()
        sys.exit(2)
    finally:
        if user_setting is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_setting


def run_as_process(main: Callable[[], Any]) -> None:
    """:func:`run_app` as a whole process (``python -m trainer``, ``python -m trainer.preview``),
    which ends when this returns or exits."""
    try:
        run_app(main)
    finally:
        # The interpreter's last garbage collections walk every object still alive, millions once
        # torch._dynamo (and sympy) are imported: about 1 s of every exit on 2 vCPUs. Everything a
        # run writes is closed by now, so those objects are left to the operating system. Only a
        # process's entry point may do this: objects frozen here are never collected.
        gc.freeze()


MAX_JOB_NAME = 200  # bytes, under the 255 most file systems allow for one name


def job_name(number: int, overrides: Sequence[str]) -> str:
    """``NUM_k=v,k=v`` for a sweep job's directory, overrides in command-line order (a sweeper's
    own parameters come first); long names are cut and end in a hash of the full name."""
    name = f"{number}_" + ",".join(overrides).replace("/", "_")
    if len(name.encode()) <= MAX_JOB_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name.encode()[: MAX_JOB_NAME - 9].decode(errors="ignore") + "~" + digest


def multiply(a: float, b: float) -> float:
    """``${mul:${optimizer.lr},0.01}``: a value that follows another, e.g. final LR = peak / 100."""
    return a * b


# Used by the configs (hydra.sweep.subdir, schedule presets); registered on import, before Hydra composes.
OmegaConf.register_new_resolver("job_name", job_name, replace=True)
OmegaConf.register_new_resolver("mul", multiply, replace=True)
