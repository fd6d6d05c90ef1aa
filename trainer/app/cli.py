"""Hydra glue for the doors: every config error (ours, Hydra's, a config file's YAML) as one line and
exit code 2; the process's end; sweep job names and the configs' resolvers."""

from __future__ import annotations

import difflib
import gc
import os
from collections.abc import Callable
from typing import Any

import yaml
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from trainer.errors import ConfigError, one_line, refuse
from trainer.rundir.lock import RunDirGuard, remove_created_run_dir


def as_config_error(error: Exception) -> ConfigError:
    """Hydra's and OmegaConf's own config errors (a missing config, a key that does not exist, an
    override that does not parse, an interpolation that does not resolve) as one ConfigError."""
    if isinstance(error, ConfigError):
        return error
    if isinstance(error, yaml.YAMLError):
        return yaml_error(error)
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


def yaml_error(error: yaml.YAMLError) -> ConfigError:
    """A config file that is not YAML (e.g. in a user's ``--config-dir``), named by its path (relative
    to the working directory when under it) and its 1-based line: ``my_conf/model/bad.yaml:3: ...``."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:  # e.g. bytes that are not text: the message names the file itself
        return ConfigError("config file", f"{one_line(error)}: fix or remove that file")
    path = os.path.relpath(mark.name)
    if path.startswith(".."):
        path = mark.name
    problem = error.problem or one_line(error)
    return ConfigError(f"{path}:{mark.line + 1}", f"{problem} (column {mark.column + 1}): fix the YAML there")


def run_app(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point so that every config error, ours or Hydra's, prints one
    line and exits 2 (Hydra's own report is several lines and exits 1) and leaves no directory."""
    user_setting = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of reporting them itself
    try:
        main()
    except (HydraException, OmegaConfBaseException, ConfigError, yaml.YAMLError) as error:
        if user_setting == "1":
            raise
        remove_created_run_dir()
        refuse(as_config_error(error))
    except OSError:
        if RunDirGuard.too_long is None:
            raise
        remove_created_run_dir()
        refuse(RunDirGuard.too_long)
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
