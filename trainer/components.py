"""Components named by ``_target_``: the one way every model, loss, optimizer and dataset is built.

A config node ``{_target_: pkg.mod.Thing, key: value, ...}`` is built with
``hydra.utils.instantiate``: ``Thing(key=value, ...)``, nested ``_target_`` nodes first. What
only the run knows (the data's ``input_shape``, ``num_classes``, ...) is passed as a keyword
argument when, and only when, the target's signature names it and the config does not set it:
a target taking ``**kwargs`` gets only what its config says. Before the call, the target is
imported and its arguments are bound to its signature, so a typo is one line naming the key,
never a stack trace from deep inside the target.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError, one_line

_PACKAGE = Path(__file__).resolve().parent
#: ``conf/`` of a source checkout or editable install, else the copy installed inside the package.
CONFIG_DIR = _PACKAGE.parent / "conf" if (_PACKAGE.parent / "conf" / "config.yaml").exists() else _PACKAGE / "conf"

#: Dotted paths of ours that moved, as saved ``config.yaml`` files still name them.
MOVED = {"trainer.loop.CrossEntropy": "trainer.training.loss.CrossEntropy"}

#: Hydra's own keys in a node: they steer ``instantiate`` and are not the target's arguments.
_HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_convert_", "_recursive_")


def target_path(node: DictConfig | Mapping) -> str | None:
    """The node's ``_target_`` as a string, or None when it has none."""
    target = node.get("_target_") if isinstance(node, (DictConfig, Mapping)) else None
    return None if target is None else str(target)


def locate(path: str, key: str) -> Callable:
    """Import ``path`` (``pkg.mod.Name``); ConfigError at ``KEY._target_`` when it cannot be."""
    from hydra.utils import get_object

    try:
        found = get_object(MOVED.get(path, path))
    except Exception as error:  # ImportError, AttributeError, ValueError for an empty path
        cause = error.__cause__ or error
        raise ConfigError(f"{key}._target_", f"cannot import {path} ({one_line(cause)})") from None
    if not callable(found):
        raise ConfigError(f"{key}._target_", f"{path} is a {type(found).__name__}, not something to call")
    return found


def _signature(target: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have none: let the call decide
        return None


def names_parameter(target: Callable, name: str, *, required: bool = False) -> bool:
    """Whether ``target``'s signature names ``name`` (a ``**kwargs`` catch-all does not count);
    ``required``: and needs a value there (no default, or a default other than None)."""
    signature = _signature(target)
    if signature is None:
        return False
    parameter = signature.parameters.get(name)
    if parameter is None or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        return False
    return not required or parameter.default is not None


def shipped_targets(group: str) -> dict[str, str]:
    """``conf/GROUP/NAME.yaml`` -> its ``_target_``, for the components this package ships (the
    ``target`` entry, whose ``_target_`` the user gives, is left out)."""
    paths = sorted((CONFIG_DIR / group).glob("*.yaml"))
    targets = {path.stem: OmegaConf.load(path).get("_target_") for path in paths}
    return {name: str(target) for name, target in targets.items() if target not in (None, "???")}


def target_of(cfg: DictConfig, group: str) -> str:
    """``GROUP._target_``: what builds the component (a ConfigError naming the shipped ones when missing)."""
    if cfg.get("_target_") is None:
        raise ConfigError(f"{group}._target_", f"missing: pick a shipped {group} ({group}={' | '.join(shipped_targets(group))}) "
                                               f"or name what to build, e.g. {group}._target_=mypackage.build")
    return str(cfg._target_)


def build(
    node: DictConfig | Mapping,
    key: str,
    *args: Any,
    runtime: Mapping[str, Any] | None = None,
    ours: Sequence[str] = ("name",),
    **given: Any,
) -> Any:
    """Instantiate ``node`` (the config at ``key``) with ``args`` and ``given`` as extra arguments,
    passed as they are (not converted to config values).

    ``runtime``: values passed only when the target's signature names them and the node does not
    set them (e.g. ``input_shape``, ``num_classes``). ``ours``: the node's keys that belong to
    the trainer (``name`` labels the run) and are not passed. Every failure (import, arguments,
    an exception raised by the target) is a ConfigError at ``key``.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    config = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    config = {k: v for k, v in config.items() if k not in ours}
    path = target_path(config)
    if path is None:
        raise ConfigError(f"{key}._target_", "missing: name what to build, e.g. _target_=torch.nn.Linear")
    target = locate(path, key)
    config["_target_"] = MOVED.get(path, path)
    kwargs = {k: v for k, v in config.items() if k not in _HYDRA_KEYS}
    extra = {name: value for name, value in (runtime or {}).items()
             if name not in kwargs and names_parameter(target, name)}
    signature = _signature(target)
    if signature is not None:
        shown = f"{path}{signature.replace(return_annotation=inspect.Signature.empty)}"
        arguments = {**kwargs, **extra, **given}
        takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        unknown = [name for name in arguments if name not in signature.parameters and not takes_any]
        if unknown:  # before a missing argument: a misspelt key is the likelier mistake
            raise ConfigError(key, f"{shown} takes no argument {', '.join(map(repr, unknown))}")
        bind = signature.bind_partial if config.get("_partial_") else signature.bind
        try:
            bind(*config.get("_args_", ()), *args, **arguments)
        except TypeError as error:
            raise ConfigError(key, f"{shown} does not take these arguments: {error}") from None
    # The config's own values go through instantiate (nested _target_ nodes are built, lists
    # become lists); the run's values are passed to the call untouched (a tuple stays a tuple,
    # a parameter group keeps its tensors).
    try:
        made = instantiate({**config, "_partial_": True}, _convert_="all")
        if config.get("_partial_"):
            return functools.partial(made, *args, **extra, **given)
        return made(*args, **extra, **given)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):  # our own builders name their key themselves
            raise cause from None
        raise ConfigError(key, f"{path} failed: {one_line(cause or error)}") from None
    except ConfigError:
        raise
    except (Exception, SystemExit) as error:  # a builder's sys.exit() must not end the run without a word
        raise ConfigError(key, f"{path} failed: {_cause(error)}") from None


def _cause(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"it called sys.exit({error.code!r})"
    return one_line(error)


# ---------------------------------------------------------------- the configs' own resolvers

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


def add(a: float, b: float) -> float:
    """``trainer.max_steps=${add:8000,${schedule.decay_steps}}``: a branch's length that follows its
    cooldown's in a sweep over cooldown lengths."""
    return a + b


# Used by the configs in CONFIG_DIR (hydra.sweep.subdir, schedule presets): registered with it,
# before anything composes them (the CLI, trainer.fit, Hydra's compose API).
OmegaConf.register_new_resolver("job_name", job_name, replace=True)
OmegaConf.register_new_resolver("mul", multiply, replace=True)
OmegaConf.register_new_resolver("add", add, replace=True)
