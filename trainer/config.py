"""Checks every user-settable key before anything runs, and derives the run's quantities.

YAML holds static values; what depends on the data (updates per epoch, total steps, warmup from
a ratio) is computed here, once, into a :class:`RunPlan`. Every failure is a
:class:`~trainer.errors.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.data import SEQUENCE_DATA
from trainer.data.loading import LOADERS
from trainer.distributed import BACKENDS, STRATEGIES
from trainer.errors import ConfigError
from trainer.models import SEQUENCE_MODELS
from trainer.params import check_params
from trainer.schedules import COMMON, COMMON_KEYS, Schedule, check_schedule_params, schedule_names

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCALINGS = ("none", "linear", "sqrt")
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _positive_int(value: Any, key: str, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        key,
        f"got {value!r}; expected an integer >= {minimum}" + (" or null" if allow_none else ""),
    )


def _number(value: Any, key: str, *, low: float, high: float = math.inf, low_open: bool = False) -> None:
    in_range = (
        _is_number(value) and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    )
    bound = f"> {low}" if low_open else f">= {low}"
    _require(
        in_range, key, f"got {value!r}; expected a finite number {bound}" + (f" and <= {high}" if high < math.inf else "")
    )


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, f"got {value!r}; expected one of {', '.join(choices)}")


def validate(cfg: DictConfig) -> None:
    """Static checks of ``trainer``, ``optimizer``, ``schedule``, ``logger``, ``data``, ``model`` and ``seed``."""
    _positive_int(cfg.seed, "seed", minimum=0)
    _validate_trainer(cfg.trainer)
    _positive_int(cfg.logger.log_every_n_steps, "logger.log_every_n_steps")
    _positive_int(cfg.logger.read_every_n_steps, "logger.read_every_n_steps")
    _validate_data_and_model(cfg.data, cfg.model)
    _validate_optimizer(cfg.optimizer)
    _validate_schedule(cfg.schedule)
    warms_up = cfg.schedule.warmup_steps > 0 or cfg.schedule.warmup_ratio is not None
    _require(
        not warms_up or cfg.schedule.warmup_start_lr < cfg.optimizer.lr,
        "schedule.warmup_start_lr",
        f"the warmup rises from {cfg.schedule.warmup_start_lr} to the peak optimizer.lr={cfg.optimizer.lr}: "
        "start below the peak",
    )
    if cfg.schedule.name == "lr_range_test":
        _require(
            cfg.optimizer.lr_scaling == "none",
            "optimizer.lr_scaling",
            "the range test sweeps the absolute LRs min_lr..max_lr; use optimizer.lr_scaling=none",
        )


def _validate_trainer(t: DictConfig) -> None:
    _positive_int(t.max_steps, "trainer.max_steps", allow_none=True)
    _positive_int(t.max_epochs, "trainer.max_epochs", allow_none=True)
    _require(
        t.max_steps is not None or t.max_epochs is not None,
        "trainer.max_epochs",
        "set trainer.max_epochs or trainer.max_steps (both are null)",
    )
    _positive_int(t.accumulate_grad_batches, "trainer.accumulate_grad_batches")
    _positive_int(t.global_batch_size, "trainer.global_batch_size", allow_none=True)
    _require(
        t.global_batch_size is None or t.accumulate_grad_batches == 1,
        "trainer.global_batch_size",
        "it derives trainer.accumulate_grad_batches from the number of ranks: leave that at 1, or set the "
        "global batch to null",
    )
    _choice(t.strategy, "trainer.strategy", STRATEGIES)
    _choice(t.dist_backend, "trainer.dist_backend", BACKENDS)
    shard = t.fsdp.shard_modules
    _require(
        OmegaConf.is_list(shard) and all(isinstance(name, str) for name in shard),
        "trainer.fsdp.shard_modules",
        f"got {shard!r}; expected a list of module class names, e.g. [TransformerBlock]",
    )
    if t.clip_grad_norm is not None:
        _require(t.clip_grad_norm != math.inf, "trainer.clip_grad_norm", "got inf; use null to turn clipping off")
        _number(t.clip_grad_norm, "trainer.clip_grad_norm", low=0.0, low_open=True)
    _choice(t.device, "trainer.device", DEVICES)
    _choice(t.precision, "trainer.precision", PRECISIONS)
    _require(
        t.compile in COMPILE_MODES, "trainer.compile",
        f"got {t.compile!r}; expected false, true or a torch.compile mode: {', '.join(map(str, COMPILE_MODES[2:]))}",
    )
    _require(isinstance(t.tf32, bool), "trainer.tf32", f"got {t.tf32!r}; expected true or false")
    _positive_int(t.val_every_n_epochs, "trainer.val_every_n_epochs")
    _choice(t.objective, "trainer.objective", ("val/loss",))
    _positive_int(t.checkpoint_every_n_steps, "trainer.checkpoint_every_n_steps", allow_none=True)
    _positive_int(t.checkpoint_every_n_epochs, "trainer.checkpoint_every_n_epochs")
    _positive_int(t.keep_last_n, "trainer.keep_last_n", minimum=0)
    _require(
        t.resume is None or isinstance(t.resume, str),
        "trainer.resume",
        f"got {t.resume!r}; expected null, auto or a checkpoint path",
    )
    _choice(t.resume_schedule, "trainer.resume_schedule", ("strict", "override"))
    _choice(t.nonfinite, "trainer.nonfinite", ("skip", "stop", "raise"))
    if t.num_threads != "auto":
        _positive_int(t.num_threads, "trainer.num_threads")


def _validate_data_and_model(d: DictConfig, m: DictConfig) -> None:
    _positive_int(d.batch_size, "data.batch_size")
    _choice(d.loader, "data.loader", LOADERS)
    _positive_int(d.num_workers, "data.num_workers", minimum=0)
    for key in ("augment", "flip_test"):
        if key in d:
            _require(isinstance(d[key], bool), f"data.{key}", f"got {d[key]!r}; expected true or false")
    # Checked before anything reads data.block_size, which interpolates model.block_size.
    model_name = m.get("name")  # a user's model file may leave it out
    if d.get("name") in SEQUENCE_DATA:
        _require(
            model_name in SEQUENCE_MODELS, "model",
            f"data={d.name} holds character sequences; model={model_name} classifies fixed-size inputs: use model=gpt",
        )
    elif model_name in SEQUENCE_MODELS:
        raise ConfigError("data", f"model={model_name} reads token sequences: use data={' or data='.join(SEQUENCE_DATA)}")
    if model_name == "gpt":
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            _positive_int(m[key], f"model.{key}")
        _require(
            m.n_embd % m.n_head == 0, "model.n_head",
            f"model.n_embd={m.n_embd} must be a multiple of model.n_head={m.n_head}, e.g. n_embd=384 n_head=6",
        )
    if "dropout" in m:
        _number(m.dropout, "model.dropout", low=0.0, high=0.99)


def _validate_optimizer(o: DictConfig) -> None:
    _number(o.lr, "optimizer.lr", low=0.0, low_open=True)
    _choice(o.lr_scaling, "optimizer.lr_scaling", LR_SCALINGS)
    _positive_int(o.reference_batch_size, "optimizer.reference_batch_size")
    _require(
        o.lr_scales is None or isinstance(o.lr_scales, Mapping),
        "optimizer.lr_scales",
        f"got {o.lr_scales!r}; expected module names and multipliers, e.g. {{layer1:0.1,layer2:0.5}}",
    )
    for module, scale in (o.lr_scales or {}).items():
        _number(scale, f"optimizer.lr_scales.{module}", low=0.0, low_open=True)
    _number(o.weight_decay, "optimizer.weight_decay", low=0.0)
    if "betas" in o:  # Adam's family
        betas = o.betas
        _require(
            len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
            "optimizer.betas",
            f"got {list(betas)!r}; expected two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
    if "momentum" in o:  # SGD's family
        _number(o.momentum, "optimizer.momentum", low=0.0, high=1.0)
    if "nesterov" in o:
        _require(
            not o.nesterov or o.momentum > 0,
            "optimizer.nesterov",
            "nesterov needs optimizer.momentum > 0; set optimizer.momentum=0.9 or optimizer.nesterov=false",
        )


#: Schedules whose shape is defined per optimizer update (``schedule.interval=step`` only).
PER_UPDATE_ONLY = ("onecycle", "lr_range_test")


def _validate_schedule(s: DictConfig) -> None:
    _require(
        s.name in schedule_names(),
        "schedule.name",
        f"unknown schedule {s.name!r}; known: {', '.join(schedule_names())}",
    )
    check_params(COMMON, {k: s[k] for k in COMMON}, "schedule", owner="every schedule")
    if s.warmup_ratio is not None:
        _require(
            s.warmup_steps == 0,
            "schedule.warmup_ratio",
            "set either schedule.warmup_steps or schedule.warmup_ratio, not both "
            "(e.g. schedule.warmup_steps=0 schedule.warmup_ratio=0.1)",
        )
    check_schedule_params(s.name, {k: v for k, v in s.items() if k not in COMMON_KEYS})
    if s.name in PER_UPDATE_ONLY:
        # Seed 003: OneCycleLR steps after every update; stepped per epoch it would hold each LR
        # for a whole epoch and reach its phases only at epoch ends.
        _require(
            s.interval == "step",
            "schedule.interval",
            f"{s.name} is defined per optimizer update; use schedule.interval=step",
        )
    if s.name == "lr_range_test":
        _require(
            s.temperature == 1,
            "schedule.temperature",
            "the range test sweeps the absolute LRs min_lr..max_lr; leave schedule.temperature=1",
        )
        _require(
            s.warmup_steps == 0 and s.warmup_ratio is None,
            "schedule.warmup_steps",
            "the range test sweeps from min_lr to max_lr itself; a warmup would keep it from reaching "
            "max_lr: set schedule.warmup_steps=0 (and leave schedule.warmup_ratio unset)",
        )


@dataclass(frozen=True)
class RunPlan:
    """Quantities derived from the config and the data size.

    ``max_updates`` counts optimizer updates; ``total_steps`` and ``warmup_steps`` are in the
    schedule's ``interval`` units (updates or epochs).
    """

    updates_per_epoch: int
    max_updates: int
    num_epochs: int
    total_steps: int
    warmup_steps: int
    lr_scale: float = 1.0  # multiplies every LR of the schedule: schedule.temperature × the batch-size rule
    accumulate_grad_batches: int = 1  # micro-batches of data.batch_size per update on each rank
    global_batch_size: int = 1  # examples per update over all ranks


def accumulation(cfg: DictConfig, world_size: int = 1) -> int:
    """Micro-batches per update and rank: ``trainer.accumulate_grad_batches``, or what
    ``trainer.global_batch_size`` = data.batch_size × ``world_size`` × accumulation gives."""
    t, batch_size = cfg.trainer, cfg.data.batch_size
    if t.global_batch_size is None:
        return t.accumulate_grad_batches
    _require(
        t.global_batch_size >= world_size,
        "trainer.global_batch_size",
        f"{t.global_batch_size} examples per update cannot give each of {world_size} ranks one: "
        "raise it or launch fewer processes",
    )
    per_rank, rest = divmod(t.global_batch_size, batch_size * world_size)
    _require(
        rest == 0 and per_rank >= 1,
        "trainer.global_batch_size",
        f"{t.global_batch_size} is not a multiple of data.batch_size={batch_size} × {world_size} ranks "
        f"= {batch_size * world_size}: use a multiple of it (e.g. {batch_size * world_size * max(per_rank, 1)}) "
        "or another data.batch_size",
    )
    return per_rank


def plan_run(cfg: DictConfig, num_train_examples: int, world_size: int = 1) -> RunPlan:
    """Derive updates per epoch, the update budget and the schedule length; check they fit.

    The train loader drops the last partial batch and an epoch ends on the last whole update,
    so updates per epoch = floor(floor(N / batch_size) / (accumulation × world_size)) = floor(N /
    global batch): the same at any world size for the same global batch.
    """
    t, s = cfg.trainer, cfg.schedule
    accumulate = accumulation(cfg, world_size)
    global_batch = cfg.data.batch_size * accumulate * world_size
    batches = num_train_examples // cfg.data.batch_size
    updates_per_epoch = batches // (accumulate * world_size)
    _require(
        updates_per_epoch >= 1,
        "data.batch_size",
        f"{num_train_examples} training examples give {batches} batches of {cfg.data.batch_size}, "
        f"fewer than the {accumulate * world_size} of one update ({accumulate} accumulated × {world_size} ranks): "
        "lower the batch or the accumulation",
    )
    if s.name == "lr_range_test":
        max_updates = s.num_steps
    elif t.max_steps is not None:
        max_updates = t.max_steps
    else:
        max_updates = t.max_epochs * updates_per_epoch
    num_epochs = math.ceil(max_updates / updates_per_epoch)
    derived_total = max_updates if s.interval == "step" else num_epochs
    total_steps = s.total_steps if s.total_steps is not None else derived_total
    if s.warmup_ratio is not None:
        warmup_steps = round(s.warmup_ratio * total_steps)
    else:
        warmup_steps = s.warmup_steps
    _require(
        warmup_steps <= total_steps,
        "schedule.warmup_steps",
        f"warmup of {warmup_steps} {s.interval}s exceeds schedule.total_steps={total_steps}: "
        "shorten the warmup or train longer",
    )
    lr_scale = s.temperature * batch_lr_factor(cfg, global_batch)
    _require(
        math.isfinite(lr_scale) and lr_scale > 0,
        "schedule.temperature",
        f"schedule.temperature × the optimizer.lr_scaling factor is {lr_scale}, not a usable LR multiplier",
    )
    return RunPlan(
        updates_per_epoch, max_updates, num_epochs, total_steps, warmup_steps, lr_scale=lr_scale,
        accumulate_grad_batches=accumulate, global_batch_size=global_batch,
    )


def batch_lr_factor(cfg: DictConfig, global_batch_size: int) -> float:
    """``optimizer.lr_scaling``: (B / reference_batch_size)^p with B the examples per update over
    all ranks (the global batch); p = 1 (linear, Goyal et al.), ½ (sqrt, seed 002: batch 1024
    against 256 runs at 2η), or 0 (none)."""
    o = cfg.optimizer
    power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[o.lr_scaling]
    return (global_batch_size / o.reference_batch_size) ** power


def warmup_warning(cfg: DictConfig, schedule: Schedule) -> str | None:
    """A warning when a transformer starts AdamW at half its peak LR or more (no warmup), or None.

    Seed 004: "Warmup is not optional for transformer training with Adam": Adam's second-moment
    estimates start from nothing, so its first updates are large and noisy. A run may still want
    it (a short fine-tune, a range test), so this warns instead of refusing.
    """
    if cfg.model.get("name") not in SEQUENCE_MODELS or cfg.optimizer.get("name") != "adamw":
        return None
    first, peak = schedule.lr(0), schedule.peak_lr * schedule.lr_scale
    if first < 0.5 * peak:
        return None
    return (
        f"warning: schedule.warmup_steps: model={cfg.model.name} trains with AdamW from {first:.3g}, "
        f"{first / peak:.0%} of its peak LR, at update 0; transformers trained with Adam often diverge "
        "early without a warmup (seed 004): set schedule.warmup_steps (e.g. 100) or schedule.warmup_ratio"
    )
