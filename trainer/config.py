"""Checks every user-settable key before anything runs, and derives the run's quantities.

YAML holds static values; what depends on the data (updates per epoch, total steps, warmup from
a ratio) is computed here, once, into a :class:`RunPlan`. Every failure is a
:class:`~trainer.errors.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from trainer.data import SEQUENCE_DATA, check_data
from trainer.distributed import BACKENDS, STRATEGIES
from trainer.ema import EMA_DECAY
from trainer.errors import ConfigError
from trainer.finetune import FINETUNE, check_finetune
from trainer.grad_spike import GRAD_SPIKE
from trainer.models import SEQUENCE_MODELS, check_model
from trainer.optim import check_optimizer
from trainer.params import Param, check_params, unknown_key_message
from trainer.schedules import COMMON, COMMON_KEYS, Schedule, check_schedule_params, schedule_names
from trainer.stopping import EARLY_STOPPING

#: The config's top-level keys: one group per component, and the seed.
TOP_LEVEL = ("model", "data", "optimizer", "loss", "schedule", "trainer", "logger", "seed")
SEED = Param(0, "seeds model init, data order and synthetic data", int, low=0)

#: ``trainer.*`` (conf/trainer/default.yaml): read by trainer.run and trainer.loop.
TRAINER: dict[str, Param] = {
    "max_epochs": Param(3, "epochs to train; ignored when max_steps is set", int, low=1, extra=(None,)),
    "max_steps": Param(None, "optimizer updates to train; wins over max_epochs when set", int, low=1, extra=(None,)),
    "accumulate_grad_batches": Param(1, "micro-batches per optimizer update and rank (the schedule counts updates)",
                                     int, low=1),
    "global_batch_size": Param(None, "examples per update over all ranks; derives accumulate_grad_batches", int,
                               low=1, extra=(None,)),
    "strategy": Param("auto", "auto: ddp when launched with more than one process, else single", str,
                      choices=STRATEGIES),
    "dist_backend": Param("auto", "process-group backend; auto: nccl on CUDA, gloo on CPU", str, choices=BACKENDS),
    "clip_grad_norm": Param(1.0, "max total gradient norm (L2); null = no clipping", float, low=0, low_open=True,
                            extra=(None,)),
    "device": Param("auto", "where to train", str, choices=("auto", "cpu", "cuda")),
    "compile": Param(False, "torch.compile the model: true, false or a torch.compile mode", bool,
                     extra=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    "tf32": Param(True, "on CUDA, fp32 matmuls and convolutions use TensorFloat-32", bool),
    "precision": Param("auto", "auto: bf16 on CUDA, fp32 on CPU; fp16 uses a GradScaler", str,
                       choices=("auto", "fp32", "bf16", "fp16")),
    "val_every_n_epochs": Param(1, "validate after every N epochs (and after the last update)", int, low=1),
    "label_smoothing": Param(0.0, "cross-entropy label smoothing", float, low=0, high=1, high_open=True),
    "objective": Param("val/loss", "metric returned to Hydra sweepers (minimised)", str, choices=("val/loss",)),
    "checkpoint_every_n_epochs": Param(1, "write last.pt every N epoch ends", int, low=1),
    "checkpoint_every_n_steps": Param(None, "also write last.pt every N updates", int, low=1, extra=(None,)),
    "keep_last_n": Param(0, "keep the N newest step-XXXXXXXX.pt copies", int, low=0),
    "resume": Param(None, "null, auto (this run dir's last.pt, if any) or a checkpoint path", str, extra=(None,)),
    "resume_schedule": Param("strict", "strict: refuse a changed schedule; override: take the new one", str,
                             choices=("strict", "override")),
    "nonfinite": Param("skip", "NaN/inf loss or gradients: skip the update, stop (exit 4) or raise", str,
                       choices=("skip", "stop", "raise")),
    "num_threads": Param("auto", "CPU intra-op threads; auto = $OMP_NUM_THREADS, else the usable CPUs", int, low=1,
                         extra=("auto",)),
    **FINETUNE,
    "ema_decay": EMA_DECAY,
}

#: ``trainer.fsdp.*``: read by trainer.distributed.
FSDP: dict[str, Param] = {
    "shard_modules": Param([], "module class names FSDP2 shards one by one, besides the shipped blocks", list,
                           item=str),
}

#: ``trainer``'s nested nodes, each declared as its own dict next to the code that reads it.
TRAINER_NODES: dict[str, dict[str, Param]] = {
    "fsdp": FSDP, "early_stopping": EARLY_STOPPING, "grad_spike": GRAD_SPIKE,
}

#: ``logger.*`` (conf/logger/tensorboard.yaml): read by trainer.logger.
LOGGER: dict[str, Param] = {
    "log_every_n_steps": Param(10, "write train/* scalars every N optimizer updates", int, low=1),
    "read_every_n_steps": Param(50, "read logged device values (one host-device sync) every N updates", int, low=1),
    "progress_bar": Param(True, "tqdm bar with loss and LR on the console", bool),
}


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def validate(cfg: DictConfig) -> None:
    """Static checks of ``trainer``, ``optimizer``, ``schedule``, ``logger``, ``data``, ``model`` and ``seed``."""
    for key in cfg:
        if key not in TOP_LEVEL:  # e.g. +foo=1, which nothing reads
            raise ConfigError(str(key), unknown_key_message(str(key), TOP_LEVEL, "the config"))
    SEED.check(cfg.seed, "seed")
    _validate_trainer(cfg.trainer)
    check_params(LOGGER, cfg.logger, "logger", owner="logger")
    _validate_data_and_model(cfg.data, cfg.model)
    check_optimizer(cfg.optimizer)
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
    check_params(TRAINER, {k: v for k, v in t.items() if k not in TRAINER_NODES}, "trainer", owner="trainer")
    for node, params in TRAINER_NODES.items():
        _require(OmegaConf.is_dict(t.get(node)), f"trainer.{node}", f"expected a mapping of {', '.join(params)}")
        check_params(params, t[node], f"trainer.{node}", owner=f"trainer.{node}")
    _require(
        t.ema_decay is None or t.strategy != "fsdp",
        "trainer.ema_decay",
        "the weight EMA is not supported with trainer.strategy=fsdp (its parameters are shards): use "
        "trainer.strategy=ddp, or trainer.ema_decay=null",
    )
    check_finetune(t)
    _require(
        t.max_steps is not None or t.max_epochs is not None,
        "trainer.max_epochs",
        "set trainer.max_epochs or trainer.max_steps (both are null)",
    )
    _require(
        t.global_batch_size is None or t.accumulate_grad_batches == 1,
        "trainer.global_batch_size",
        "it derives trainer.accumulate_grad_batches from the number of ranks: leave that at 1, or set the "
        "global batch to null",
    )


def _validate_data_and_model(d: DictConfig, m: DictConfig) -> None:
    # Checked before anything reads data.block_size, which interpolates model.block_size.
    model_name = m.get("name")  # a user's model file may leave it out
    if d.get("name") in SEQUENCE_DATA:
        _require(
            model_name in SEQUENCE_MODELS, "model",
            f"data={d.name} holds character sequences; model={model_name} classifies fixed-size inputs: use model=gpt",
        )
    elif model_name in SEQUENCE_MODELS:
        raise ConfigError("data", f"model={model_name} reads token sequences: use data={' or data='.join(SEQUENCE_DATA)}")
    check_model(m)
    check_data(d)  # after the model: data.block_size follows model.block_size
    if model_name == "gpt":
        _require(
            m.n_embd % m.n_head == 0, "model.n_head",
            f"model.n_embd={m.n_embd} must be a multiple of model.n_head={m.n_head}, e.g. n_embd=384 n_head=6",
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
    for name in (s.name, *(phase.name for phase in s.get("phases") or ())):  # a chain's phases too
        # Seed 003: OneCycleLR steps after every update; stepped per epoch it would hold each LR
        # for a whole epoch and reach its phases only at epoch ends.
        _require(
            name not in PER_UPDATE_ONLY or s.interval == "step",
            "schedule.interval",
            f"{name} is defined per optimizer update; use schedule.interval=step",
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
