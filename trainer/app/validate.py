"""Checks every user-settable key before anything runs.

Every failure is a :class:`~trainer.errors.ConfigError` naming the key and the fix. Each key is
declared once, next to the code that reads it: ``trainer.*`` here and in the modules that own a
feature (the controls, ``trainer.unfreeze``, ``trainer.init_from``), the schedules' in their
registry, the optimizer's, data's and models' with their builders. YAML holds static values; what
depends on the data is derived into a :class:`~trainer.plan.RunPlan` when the run is built.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from trainer import batch_ramp
from trainer.controls import check_controls, control_keys
from trainer.data import CLASS_DATA, SEQUENCE_DATA, check_data
from trainer.distributed import BACKENDS, STRATEGIES
from trainer.errors import ConfigError, require
from trainer.models import FIXED_INPUT_MODELS, SEQUENCE_MODELS, check_model
from trainer.optim import schedule_free
from trainer.optim.factory import check_optimizer
from trainer.optim.unfreeze import UNFREEZE, check_unfreeze
from trainer.params import Param, check_params, unknown_key_message
from trainer.plan import check_one_warmup, warms_up
from trainer.rundir import branch, init_from
from trainer.rundir.writers import LOGGER, check_writers, writer_nodes
from trainer.schedules.named import check_named_schedules
from trainer.schedules.registry import COMMON, COMMON_KEYS, check_schedule_params, schedule_names, spec_of
from trainer.schedules.schedule import Schedule
from trainer.training.clock import check_time
from trainer.training.precision import check_precision

#: The config's top-level keys: one group per component, and the seed.
TOP_LEVEL = ("model", "data", "optimizer", "loss", "schedule", "trainer", "logger", "seed")

SEED = Param(0, "seeds model init, data order and synthetic data", int, low=0)

#: ``trainer.*`` (conf/trainer/default.yaml) not owned by a feature module: read by trainer.app and trainer.training.
TRAINER: dict[str, Param] = {
    "max_epochs": Param(3, "epochs to train; ignored when max_steps (max_samples, max_tokens, max_time) is set", int,
                        low=1, extra=(None,)),
    "max_steps": Param(None, "optimizer updates to train; wins over max_epochs when set", int, low=1, extra=(None,)),
    "max_samples": Param(None, "training examples to train on (the updates that first reach them); in place of "
                         "max_steps", int, low=1, extra=(None,)),
    "max_tokens": Param(None, "tokens to train on, for token data (the updates that first reach them; on padded "
                        "rows, counted as they train); in place of max_steps", int, low=1, extra=(None,)),
    "max_time": Param(None, "seconds of training (validation and checkpoints not counted) after which the run ends "
                      "with its validation and checkpoint; max_steps (max_samples, max_tokens) may cap it too", int,
                      low=1, extra=(None,)),
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
    "resume_accept": Param([], "keys (or nodes, e.g. data) whose change a resume accepts, e.g. [model.dropout]; "
                           "others that change what an update computes are refused", list, item=str),
    "resume_schedule": Param("strict", "strict: refuse a changed schedule; override: take the new one", str,
                             choices=("strict", "override")),
    "num_threads": Param("auto", "CPU intra-op threads; auto = $OMP_NUM_THREADS, else the cores other processes "
                         "leave free as the run starts (a resumed run: its checkpoint's)", int, low=1,
                         extra=("auto",)),
    "unfreeze": UNFREEZE,
    **init_from.PARAMS,
    **branch.PARAMS,
}

#: ``trainer.fsdp.*``: read by trainer.distributed.
FSDP: dict[str, Param] = {
    "shard_modules": Param([], "module class names FSDP2 shards one by one, besides the shipped blocks", list,
                           item=str),
}



def trainer_params() -> tuple[dict[str, Param], dict[str, dict[str, Param]]]:
    """Every ``trainer.*`` key: the plain ones, and the nested nodes (``fsdp``, and those of controls)."""
    keys = {**TRAINER, **control_keys()}
    plain = {key: param for key, param in keys.items() if isinstance(param, Param)}
    nodes = {"fsdp": FSDP, "batch_ramp": batch_ramp.PARAMS,
             **{key: node for key, node in keys.items() if not isinstance(node, Param)}}
    return plain, nodes


def validate(cfg: DictConfig, *, strategy: str | None = None) -> None:
    """Check every key of ``cfg`` (``trainer``, ``optimizer``, ``schedule``, ``logger``, ``data``,
    ``model`` and ``seed``) and what they cannot do together, under ``strategy``: the launch's
    resolved one, or (None: the preview, no launch) the config's own (``auto`` as ``single``)."""
    for key in cfg:
        if key not in TOP_LEVEL:  # e.g. +foo=1, which nothing reads
            raise ConfigError(str(key), unknown_key_message(str(key), TOP_LEVEL, "the config"))
    SEED.check(cfg.seed, "seed")
    _validate_trainer(cfg.trainer)
    # A writer's settings are its business only when it is named; a user's logger config may leave them out.
    _check_nodes("logger", LOGGER, writer_nodes(), cfg.logger, required=False)
    _validate_data_and_model(cfg.data, cfg.model)
    check_optimizer(cfg.optimizer)
    _validate_schedule(cfg.schedule, cfg.optimizer)
    check_named_schedules(cfg.optimizer, cfg.schedule)  # optimizer.param_groups[].schedule, weight_decay_schedule
    schedule_free.check_schedule(cfg.optimizer, cfg.schedule)
    check_time(cfg)
    if strategy is None:
        strategy = cfg.trainer.strategy if cfg.trainer.strategy != "auto" else "single"
    # Checks between keys of different owners, each written beside the code it protects.
    check_writers(cfg.logger.writers, cfg)
    check_controls(cfg, strategy)
    check_unfreeze(cfg.trainer.unfreeze, strategy)
    check_precision(cfg.trainer.precision, strategy)
    init_from.check_init_from(cfg.trainer)
    branch.check_branch(cfg.trainer)
    batch_ramp.check_batch_ramp(cfg.trainer.get("batch_ramp"), cfg.schedule.interval,
                                streaming=bool(cfg.data.get("streaming")))


def _check_nodes(
    prefix: str, plain: dict[str, Param], nodes: dict[str, dict[str, Param]], values: DictConfig, *,
    required: bool = True,
) -> None:
    """A group's plain keys, and each of its nested nodes (a mapping of its own keys; without
    ``required``, a node left out takes its defaults)."""
    check_params(plain, {k: v for k, v in values.items() if k not in nodes}, prefix, owner=prefix)
    for node, params in nodes.items():
        if not required and node not in values:
            continue
        require(OmegaConf.is_dict(values.get(node)), f"{prefix}.{node}", f"expected a mapping of {', '.join(params)}")
        check_params(params, values[node], f"{prefix}.{node}", owner=f"{prefix}.{node}")


def _validate_trainer(trainer: DictConfig) -> None:
    _check_nodes("trainer", *trainer_params(), trainer)
    budgets = [key for key in ("max_steps", "max_samples", "max_tokens") if trainer.get(key) is not None]
    require(
        budgets or trainer.max_epochs is not None or trainer.get("max_time") is not None,
        "trainer.max_epochs",
        "set trainer.max_epochs or trainer.max_steps (both are null)",
    )
    require(len(budgets) <= 1, f"trainer.{budgets[-1]}" if budgets else "trainer.max_steps",
            f"the run's length is set {len(budgets)} ways ({', '.join(budgets)}): keep one")
    require(
        trainer.global_batch_size is None or trainer.accumulate_grad_batches == 1,
        "trainer.global_batch_size",
        "it derives trainer.accumulate_grad_batches from the number of ranks: leave that at 1, or set the "
        "global batch to null",
    )


def _validate_data_and_model(data: DictConfig, model: DictConfig) -> None:
    # Checked before anything reads data.block_size, which interpolates model.block_size.
    model_name = model.get("name")  # a user's model file may leave it out
    # Shipped parts that cannot meet are refused here; a user's own model or data is judged by the
    # fit check before training (a model=gpt reads any token sequences of its block_size).
    if data.get("name") in SEQUENCE_DATA:
        require(
            model_name not in FIXED_INPUT_MODELS, "model",
            f"data={data.name} holds token sequences; model={model_name} classifies fixed-size inputs: use model=gpt",
        )
    elif model_name in SEQUENCE_MODELS and data.get("name") in CLASS_DATA:
        raise ConfigError("data", f"model={model_name} reads token sequences and data={data.name} holds fixed-size "
                                  f"inputs with a class: use data={' or data='.join(SEQUENCE_DATA)}, or your own token data")
    check_model(model)
    check_data(data)  # after the model: data.block_size follows model.block_size
    if model_name == "gpt":
        require(
            model.n_embd % model.n_head == 0, "model.n_head",
            f"model.n_embd={model.n_embd} must be a multiple of model.n_head={model.n_head}, e.g. n_embd=384 n_head=6",
        )


def _validate_schedule(schedule: DictConfig, optimizer: DictConfig) -> None:
    require(
        schedule.name in schedule_names(),
        "schedule.name",
        f"unknown schedule {schedule.name!r}; known: {', '.join(schedule_names())}",
    )
    check_params(COMMON, {k: schedule[k] for k in COMMON}, "schedule", owner="every schedule")
    check_one_warmup(schedule.warmup_steps, schedule.warmup_ratio)
    check_schedule_params(schedule.name, {k: v for k, v in schedule.items() if k not in COMMON_KEYS})
    for name in (schedule.name, *(phase.name for phase in schedule.get("phases") or ())):  # a chain's phases too
        require(
            not spec_of(name).per_update or schedule.interval == "step",
            "schedule.interval",
            f"{name} is defined per optimizer update; use schedule.interval=step",
        )
    if spec_of(schedule.name).absolute:  # it sweeps absolute LRs: nothing may scale or bend them
        what = f"{schedule.name} gives absolute LRs (it ignores optimizer.lr)"
        require(optimizer.lr_scaling == "none", "optimizer.lr_scaling", f"{what}; use optimizer.lr_scaling=none")
        require(schedule.temperature == 1, "schedule.temperature", f"{what}; leave schedule.temperature=1")
        require(
            not warms_up(schedule), "schedule.warmup_steps",
            f"{what} from its first to its last; a warmup would keep it from reaching the last: set "
            "schedule.warmup_steps=0 (and leave schedule.warmup_ratio unset)",
        )
    require(
        not warms_up(schedule) or schedule.warmup_start_lr < optimizer.lr,
        "schedule.warmup_start_lr",
        f"the warmup rises from {schedule.warmup_start_lr} to the peak optimizer.lr={optimizer.lr}: start below the peak",
    )


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
        "early without a warmup (seed 004): set schedule.warmup_steps (e.g. auto: T / 14) or schedule.warmup_ratio"
    )
