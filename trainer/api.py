"""``trainer.fit``: train a model object on datasets the caller already has, as the CLI would."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset as TorchDataset

from trainer.errors import ConfigError, one_line


def fit(
    model: nn.Module,
    train_data: TorchDataset,
    val_data: TorchDataset | None = None,
    *,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``train_data`` (map-style, ``(input, target)`` pairs), validating on
    ``val_data`` (None: no validation), with the CLI's validation, schedule, logging, checkpoints
    and resume; returns the final metrics (``val/loss``, ``val/acc`` when the outputs are class
    scores, ``train/loss``, ``updates``, ...).

    ``overrides`` are the CLI's override strings (``"optimizer=sgd"``, ``"trainer.max_epochs=5"``,
    ``"trainer.resume=auto"``); the data is read as ``data=torch_dataset`` reads it (seeded order
    and transforms, ``data.batch_size``, ``data.num_workers``; ``data.num_classes`` when the
    dataset has no ``classes``). ``run_dir``: where the run writes, by default
    ``outputs/DATE/TIME`` like the CLI. A bad setting raises :class:`trainer.errors.ConfigError`
    before anything is written.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from trainer.app.run import train
    from trainer.components import CONFIG_DIR
    from trainer.data.map_style import map_dataset
    from trainer.training.precision import resolve_device

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
    dataset = map_dataset(
        train_data, val_data, num_classes=cfg.data.num_classes, num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    if run_dir is None:
        run_dir = Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")
    return train(cfg, Path(run_dir), list(overrides), model=model, dataset=dataset)
