"""``trainer.fit``: train a model object on datasets the caller already has, as the CLI would."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from trainer.app.threads import CpuClock
from trainer.errors import ConfigError, one_line


def fit(
    model: nn.Module,
    train_data: TorchDataset,
    val_data: TorchDataset | None = None,
    *,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``train_data`` (map-style: ``(input, target)`` pairs, or dicts of named
    tensors padded by ``data.collate``: docs/transformers.md), validating on
    ``val_data`` (None: no validation), with the CLI's validation, schedule, logging, checkpoints
    and resume; returns the final metrics (``val/loss``, ``val/acc`` when the outputs are class
    scores, ``train/loss``, ``updates``, ...).

    ``overrides`` are the CLI's override strings (``"optimizer=sgd"``, ``"trainer.max_epochs=5"``;
    continue a run with ``"trainer.resume=auto"``, and train it longer with
    ``"trainer.resume_schedule=override"`` too); the data is read as ``data=torch_dataset`` reads
    it (seeded order and transforms, ``data.batch_size``; ``data.num_workers`` 0 for a
    ``TensorDataset``, else the usable CPUs up to 4). ``run_dir``: where the run writes, by
    default ``outputs/DATE/TIME`` like the CLI, with ``-1``, ``-2``, ... when a run in this second
    took that name already. The caller's random generators (Python's, torch's) are as they were
    once ``fit`` returns.

    A bad setting raises :class:`trainer.errors.ConfigError` before anything is written; SIGINT or
    SIGTERM (a notebook's interrupt) raises :class:`trainer.Preempted` once ``last.pt`` holds the
    update that was running: ``fit`` again with ``"trainer.resume=auto"`` and the same
    ``run_dir`` continues it.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from trainer.app.run import train
    from trainer.components import CONFIG_DIR
    from trainer.data import LOOP_PARAMS
    from trainer.data.map_style import PARAMS, map_dataset, worker_count
    from trainer.training.precision import resolve_device

    started = CpuClock.now()
    label = f"{type(model).__module__}.{type(model).__qualname__}"  # names the model in logs and config.yaml
    base = ["data=torch_dataset", "model=target", f"model._target_='{label}'"]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="fit"):
            cfg = compose(config_name="config", overrides=[*base, *overrides])
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError("overrides", one_line(error)) from None
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"got a {type(model).__name__}; expected a torch.nn.Module")
    device = resolve_device(cfg.trainer.device)
    LOOP_PARAMS["num_workers"].check(cfg.data.num_workers, "data.num_workers")
    for key in ("on_error", "max_skipped"):
        PARAMS[key].check(cfg.data[key], f"data.{key}")
    dataset = map_dataset(
        train_data, val_data, num_classes=cfg.data.num_classes,
        num_workers=worker_count(cfg.data.num_workers, train_data), pin_memory=device.type == "cuda",
        skip=cfg.data.on_error == "skip", max_skipped=cfg.data.max_skipped,
    )
    run_dir = Path(run_dir) if run_dir is not None else fresh_run_dir(Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S"))
    with callers_generators_kept():
        return train(cfg, run_dir, list(overrides), model=model, dataset=dataset, cpu_since=started)


@contextmanager
def callers_generators_kept() -> Iterator[None]:
    """The run seeds Python's and torch's generators (``trainer.seed``); put the caller's back
    afterwards so their own draws go on as they would have without ``fit``."""
    python, cpu = random.getstate(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    try:
        yield
    finally:
        random.setstate(python)
        torch.set_rng_state(cpu)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def fresh_run_dir(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2``, ...: the first that no run has taken (quick fits in a
    loop start within one second)."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate
