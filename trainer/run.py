"""Builds a run from a composed config and trains it: the body of ``python -m trainer``."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from trainer.config import RunPlan, plan_run, validate
from trainer.data import build_dataset, data_shape, num_train_examples
from trainer.logger import RunLogger
from trainer.loop import Loop, TrainStep
from trainer.models import build_model
from trainer.optim import build_optimizer, group_names
from trainer.precision import resolve_device, resolve_precision
from trainer.schedules import Schedule, build_schedule


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and every CUDA device)."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolved_config(cfg: DictConfig, plan: RunPlan) -> DictConfig:
    """The config as run: interpolations resolved, derived schedule lengths filled in."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.schedule.total_steps = plan.total_steps
        out.schedule.warmup_steps = plan.warmup_steps
        out.schedule.warmup_ratio = None
    return out


def build_optimization(
    cfg: DictConfig, *, num_train: int, input_shape: tuple[int, ...], num_classes: int, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, Schedule, RunPlan]:
    """Model, optimizer, schedule and the derived plan: shared by training and the preview."""
    plan = plan_run(cfg, num_train)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, input_shape=input_shape, num_classes=num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, device)
    schedule = build_schedule(
        cfg.schedule,
        peak_lr=cfg.optimizer.lr,
        total_steps=plan.total_steps,
        warmup_steps=plan.warmup_steps,
        updates_per_epoch=plan.updates_per_epoch,
    )
    return model, optimizer, schedule, plan


def build_for_preview(cfg: DictConfig) -> tuple[torch.optim.Optimizer, Schedule, RunPlan]:
    """What the preview needs, from the config alone: no data is loaded, nothing is trained."""
    validate(cfg)
    input_shape, num_classes = data_shape(cfg.data)
    _, optimizer, schedule, plan = build_optimization(
        cfg, num_train=num_train_examples(cfg.data), input_shape=input_shape, num_classes=num_classes,
        device=torch.device("cpu"),
    )
    return optimizer, schedule, plan


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Validate, build and train; returns the final metrics (``val/loss``, ``val/acc``, ...).

    Every check that can fail on user input runs before the first file is written.
    """
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    dataset = build_dataset(cfg.data, cfg.seed).to(device)
    model, optimizer, schedule, plan = build_optimization(
        cfg, num_train=len(dataset.train_y), input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(resolved_config(cfg, plan), run_dir / "config.yaml")
    logger = RunLogger(
        run_dir,
        log_every_n_steps=1 if cfg.schedule.name == "lr_range_test" else cfg.logger.log_every_n_steps,
        max_updates=plan.max_updates,
        group_names=group_names(optimizer),
        progress_bar=cfg.logger.progress_bar,
    )
    step = TrainStep(
        model,
        optimizer,
        schedule,
        precision,
        nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing),
        cfg.trainer.clip_grad_norm,
    )
    loop = Loop(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        step=step,
        dataset=dataset,
        plan=plan,
        logger=logger,
        precision=precision,
        batch_size=cfg.data.batch_size,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        val_every_n_epochs=cfg.trainer.val_every_n_epochs,
        seed=cfg.seed,
    )
    try:
        return loop.run()
    finally:
        logger.close()
