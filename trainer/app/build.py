"""Builds the parts of a run from a checked config: loss, model, optimizer, schedule, controls and
the loop. Shared by training, the preview and the overhead benchmark, so each runs what users run."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.app.combinations import check_spike_window, check_stages_fit, check_watched_metrics
from trainer.app.validate import validate
from trainer.components import MOVED, build, locate, names_parameter, target_of
from trainer.controls import Controls, Parts
from trainer.data import SEQUENCE_DATA, Dataset, data_spec, first_batch
from trainer.data.loading import TrainBatches
from trainer.data.map_style import worker_count
from trainer.data.named import LABELS, Batch, call_model, describe, is_named, targets_of, to_device
from trainer.distributed import World
from trainer.errors import ConfigError, one_line
from trainer.models import SEQUENCE_MODELS, build_model
from trainer.models.flops import flops_per_token, transformer_shape
from trainer.models.lora import with_lora
from trainer.optim import schedule_free
from trainer.optim.factory import build_optimizer
from trainer.optim.groups import group_names
from trainer.optim.unfreeze import Stage, unfreeze_stages
from trainer.plan import RunPlan, plan_run
from trainer.rundir.checkpoint import Checkpointer, Contents
from trainer.rundir.logger import RunLogger
from trainer.rundir.throughput import Throughput, device_peak_flops
from trainer.schedules.curve import LrLog
from trainer.schedules.named import bind_named_schedules
from trainer.schedules.registry import build_schedule, spec_of
from trainer.schedules.schedule import Schedule
from trainer.training.clock import TrainingClock, uses_clock
from trainer.training.counts import TokenCount, check_token_count, counts_padded_tokens
from trainer.training.evaluate import Validation, evaluate
from trainer.training.loop import Loop
from trainer.training.loss import Loss, TokenLoss, bind_loss, model_gets_labels
from trainer.training.precision import Precision, configure_cuda, resolve_precision
from trainer.training.step import TrainStep

#: ``loss=cross_entropy``'s target: its errors are the model's (its outputs), not the loss's.
CROSS_ENTROPY = "trainer.training.loss.CrossEntropy"


def tokens_per_example(cfg: DictConfig, input_shape: tuple[int, ...]) -> int | None:
    """The tokens one example trains on: its length, for token data (a shipped token source, any
    data a sequence model reads, or Hugging Face text packed into blocks); None for other data
    (padded rows of several lengths included: their tokens are no function of the update)."""
    packed = cfg.data.get("name") == "hf_dataset" and cfg.data.get("block_size") is not None
    sequences = cfg.data.get("name") in SEQUENCE_DATA or cfg.model.get("name") in SEQUENCE_MODELS or packed
    return input_shape[0] if sequences and len(input_shape) == 1 else None


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and every CUDA device)."""
    random.seed(seed)
    torch.manual_seed(seed)


def build_loss(cfg: DictConfig) -> Loss:
    """``loss._target_``, given ``trainer.label_smoothing`` when its signature names it; smoothing
    asked of a loss that does not take it (``loss=model``: the model's own) is refused, not dropped."""
    target = target_of(cfg.loss, "loss")
    if cfg.trainer.label_smoothing and not names_parameter(locate(target, "loss"), "label_smoothing"):
        raise ConfigError("trainer.label_smoothing", f"{cfg.trainer.label_smoothing} asks {target} to smooth its "
                                                     "targets, and it takes no label_smoothing: set "
                                                     "trainer.label_smoothing=0, or use loss=cross_entropy")
    loss_fn = build(cfg.loss, "loss", runtime={"label_smoothing": cfg.trainer.label_smoothing})
    if not callable(loss_fn):
        raise ConfigError("loss._target_", f"{cfg.loss._target_} built a {type(loss_fn).__name__}, which cannot be called")
    return loss_fn


@dataclass(frozen=True)
class FitCheck:
    """What :func:`check_model_fits` runs the model on before training: the run's loss, a few
    training examples, whether the data has a validation split, and whether validation scores
    mirrored images too (``flip_test``)."""

    loss_fn: Loss
    batch: Batch
    validates: bool
    flip: bool = False


def check_model_fits(model: nn.Module, check: FitCheck, device: torch.device, loss_key: str) -> set[str]:
    """One training forward pass and loss on ``check.batch`` in eval mode (no backward), then the
    validation pass on it, exactly as validation will run: a model that does not take the data's
    inputs, whose outputs the loss cannot score (in training or in validation), or whose loss no
    gradient would flow back from, is a config error before anything is written. Nothing changes:
    no parameter, buffer or generator. Returns the metrics validation will give (none without a
    validation split)."""
    batch, loss_fn = to_device(check.batch, device), bind_loss(check.loss_fn, model, named=is_named(check.batch))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # whether the loss reaches a parameter is whether it has a graph
            loss = _training_loss(model, batch, loss_fn, loss_key)
        if not (torch.is_tensor(loss) and loss.numel() == 1 and loss.is_floating_point()):
            raise ConfigError(loss_key, f"returned {type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}, "
                              "not a scalar floating-point tensor")
        if not loss.requires_grad:
            raise ConfigError(loss_key, "the loss on the model's outputs depends on no parameter that trains, so "
                              "no gradient would reach the model: check that its forward does not detach its "
                              "outputs, that the loss uses them, and that some parameter has requires_grad=True")
    finally:
        model.train(was_training)
    if not check.validates:
        return set()
    try:  # the validation path too: its forward in eval mode, no autograd, the outputs it reads
        return set(evaluate(model, [batch], resolve_precision("fp32", device), flip=check.flip, loss_fn=loss_fn))
    except Exception as error:
        raise ConfigError(loss_key, f"validation cannot score the model's outputs: {type(error).__name__}: "
                          f"{one_line(error)}") from None


def _training_loss(model: nn.Module, batch: Batch, loss_fn: Loss, loss_key: str) -> torch.Tensor:
    """The loss the training step takes on ``batch`` (per counted target for a token loss on named
    tensors); a ConfigError at ``model`` or ``loss_key`` naming what does not fit."""
    if is_named(batch) and LABELS not in batch:
        raise ConfigError("data", f"batches of named tensors ({describe(batch)}) need their targets as 'labels'")
    try:
        outputs = call_model(model, batch, labels=model_gets_labels(loss_fn))
    except Exception as error:
        raise ConfigError("model", f"does not take the data's inputs {describe(batch)}: {one_line(error)}") from None
    shape = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
    targets = targets_of(batch)
    try:
        if is_named(batch) and isinstance(loss_fn, TokenLoss):
            return loss_fn.summed(outputs, targets) / loss_fn.counted(targets).clamp(min=1)
        return loss_fn(outputs, targets)
    except Exception as error:
        raise ConfigError(loss_key, f"cannot score the model's outputs ({shape}) against targets of shape "
                          f"{tuple(targets.shape)}: {one_line(error)}") from None


@dataclass(frozen=True)
class Optimization:
    """What decides every update: the model, its optimizer and schedule, the derived plan, the
    unfreeze stages the optimizer's groups were made for, the training clock (None unless the
    schedule or the budget is in seconds) and the token count (None unless the schedule or the
    budget is in tokens of padded rows)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    plan: RunPlan
    stages: list[Stage]
    clock: TrainingClock | None = None
    tokens: TokenCount | None = None


def build_optimization(
    cfg: DictConfig, *, num_train: int, input_shape: tuple[int, ...], num_classes: int, device: torch.device,
    model: nn.Module | None = None, fit_check: FitCheck | None = None, world: World | None = None,
    token_rows: bool = False,
) -> Optimization:
    """Model, optimizer, schedule and the derived plan: shared by training and the preview.

    ``model``: a module to train instead of building ``cfg.model`` (``trainer.fit``).
    ``fit_check``: for :func:`check_model_fits`, run before the model is compiled, and the
    combinations of keys only the built run can judge (:mod:`trainer.app.combinations`).
    Under FSDP2 the model is sharded over ``world`` before the optimizer sees its parameters.
    ``token_rows``: the data's examples are named token sequences (their tokens are counted as the
    run trains them where they have no one length).
    """
    world = world or World()
    run_length = spec_of(cfg.schedule.name).run_length  # a schedule that sets the run's length itself
    seq_len = tokens_per_example(cfg, input_shape)
    counted = counts_padded_tokens(cfg, seq_len, token_rows)
    if counted:
        check_token_count(cfg)
    plan = plan_run(cfg, num_train, world.world_size, run_length=cfg.schedule[run_length] if run_length else None,
                    tokens_per_example=seq_len, counted_tokens=counted)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, input_shape=input_shape, num_classes=num_classes)
    elif cfg.model.get("lora") is not None:  # trainer.fit's model: adapters as build_model adds them
        model = with_lora(model, OmegaConf.to_container(cfg.model.lora))
    model = model.to(device)
    if fit_check is not None:
        target = MOVED.get(cfg.loss._target_, cfg.loss._target_)
        metrics = check_model_fits(model, fit_check, device, "loss" if target != CROSS_ENTROPY else "model")
    if device.type == "cuda":
        configure_cuda(tf32=cfg.trainer.tf32)
        if len(input_shape) == 3:
            # NHWC lets cuDNN pick its Tensor Core convolution kernels without transposing each layer.
            model = model.to(memory_format=torch.channels_last)
    model = world.parallelize(model)
    if cfg.trainer.compile:
        # In place: the state_dict keys stay those of the eager model, so checkpoints load either way.
        model.compile(mode=None if cfg.trainer.compile is True else cfg.trainer.compile)
    stages = unfreeze_stages(cfg.trainer.unfreeze, first_update_at=plan.first_update_at)
    optimizer = build_optimizer(cfg.optimizer, model, device, unfreeze=stages)
    schedule = build_schedule(
        cfg.schedule,
        peak_lr=cfg.optimizer.lr,
        total_steps=plan.total_steps,
        warmup_steps=plan.warmup_steps,
        updates_per_epoch=plan.updates_per_epoch,
        lr_scale=plan.lr_scale,
        units_per_update=plan.units_per_update,
    )
    schedule = bind_named_schedules(schedule, cfg, plan)  # the groups' own, and the weight decay's
    if plan.ramp is not None:  # t and the LR follow each update's size
        schedule = schedule.counting(ramp=plan.ramp)
    schedule, clock, tokens = running_counts(cfg, schedule, world, device, counted_tokens=counted)
    if fit_check is not None:
        check_watched_metrics(cfg, schedule, metrics)
        check_stages_fit(stages, optimizer, plan)
        check_spike_window(cfg, plan)
    return Optimization(model, optimizer, schedule, plan, stages, clock, tokens)


def running_counts(
    cfg: DictConfig, schedule: Schedule, world: World, device: torch.device, *, counted_tokens: bool,
) -> tuple[Schedule, TrainingClock | None, TokenCount | None]:
    """The counts the run measures as it goes, each None unless used, and ``schedule`` reading its t
    from the one it counts in: the training clock (a schedule or budget in seconds) and the tokens
    of padded rows (``counted_tokens``: a schedule or budget in tokens on such data)."""
    clock = tokens = None
    if uses_clock(cfg):
        clock = TrainingClock(world, max_time=cfg.trainer.get("max_time"), device=device,
                              counts_schedule=schedule.interval == "time")
    if counted_tokens:
        tokens = TokenCount(budget=cfg.trainer.get("max_tokens"), counts_schedule=schedule.interval == "token")
    for count in (clock, tokens):
        if count is not None and count.counts_schedule:  # t of each update is the count before it
            schedule = schedule.counting(count=count.at)
    return schedule, clock, tokens


def build_for_preview(cfg: DictConfig) -> tuple[torch.optim.Optimizer, Schedule, RunPlan]:
    """What the preview needs, from the config alone: no data is loaded, nothing is trained."""
    validate(cfg)
    spec = data_spec(cfg.data)
    built = build_optimization(
        cfg, num_train=spec.num_train, input_shape=spec.input_shape, num_classes=spec.num_classes,
        device=torch.device("cpu"), token_rows=spec.token_rows,
    )
    return built.optimizer, built.schedule, built.plan


@dataclass(frozen=True)
class Training:
    """The parts of the loop that hold state, built before a checkpoint is restored into them."""

    step: TrainStep
    controls: Controls
    checkpoints: Checkpointer
    batches: TrainBatches
    validation: Validation


def build_training(
    cfg: DictConfig, built: Optimization, *, dataset: Dataset, precision: Precision, run_dir: Path, config: dict,
    fingerprint: dict, loss_fn: Loss | None = None, world: World | None = None,
) -> Training:
    """The step, the controls, the checkpointer, the batches and the validation, exactly as
    ``python -m trainer`` runs them; the overhead benchmark builds them here too, so it times what
    users run."""
    world = world or World()
    model, optimizer, plan = built.model, built.optimizer, built.plan
    device = next(model.parameters()).device
    named = is_named(first_batch(dataset))  # a causal LM's named labels are its inputs: the loss shifts them
    loss_fn = bind_loss(build_loss(cfg) if loss_fn is None else loss_fn, model, named=named)
    controls = Controls.build(cfg, Parts(model, optimizer, built.schedule, device, world,
                                         scales_loss=precision.uses_grad_scaler, dataset=dataset))
    step = TrainStep(world.trainable(model), optimizer, built.schedule, precision, loss_fn,
                     cfg.trainer.clip_grad_norm, world, controls=controls, clock=built.clock, tokens=built.tokens)
    contents = Contents(model, optimizer, step, controls, world, config, fingerprint, cfg.seed, plan.data_position)
    checkpoints = Checkpointer(
        run_dir, contents, every_n_steps=cfg.trainer.checkpoint_every_n_steps,
        every_n_epochs=cfg.trainer.checkpoint_every_n_epochs, keep_last_n=cfg.trainer.keep_last_n,
    )
    batches = TrainBatches(
        dataset, cfg.data.batch_size, cfg.seed, device, plan.updates_per_epoch, plan.accumulate_grad_batches,
        num_workers=worker_count(cfg.data.num_workers, dataset) if cfg.data.loader == "dataloader" else None,
        rank=world.rank, world_size=world.world_size, ramp=plan.ramp,
    )
    validation = Validation(model, dataset, cfg.data.batch_size, precision, device, loss_fn=loss_fn,
                            flip=getattr(dataset, "flip_test", False), world=world)
    return Training(step, controls, checkpoints, batches, validation)


def throughput(cfg: DictConfig, training: Training, plan: RunPlan, world: World) -> Throughput | None:
    """What ``train/tokens``, ``perf/tokens_per_s`` and ``perf/mfu`` count, for token data (None
    for other data): the global batch's tokens, the model's FLOPs per token (a transformer whose
    shape is known) and the peak FLOP/s of every rank's device (a CUDA device in the table).
    Padded rows whose tokens the run counts: that count, without MFU (FLOPs per token depend on
    the sequence length, which varies)."""
    if training.step.tokens is not None:
        return Throughput(training.step.tokens.at)
    seq_len = tokens_per_example(cfg, tuple(training.batches.dataset.input_shape))
    if seq_len is None:
        return None
    model = training.step.model
    shape, peak = transformer_shape(model), device_peak_flops(next(model.parameters()).device)
    return Throughput(lambda updates: plan.samples_before(updates) * seq_len, flops_per_token=flops_per_token(shape, seq_len) if shape else None,
                      peak=peak * world.world_size if peak else None)


def build_loop(
    cfg: DictConfig, training: Training, *, plan: RunPlan, run_dir: Path, config: dict, start_update: int = 0,
    resumed_val: dict[str, float] | None = None, world: World | None = None, group_lrs_differ: bool = True,
    group_wds_differ: bool = False,
) -> Loop:
    """The loop over ``training``'s parts, with its logger: built last, as its files open here.
    ``group_lrs_differ``: whether the run's parameter groups ever run at different LRs (then each
    gets its own ``train/lr/<group>`` chart; otherwise ``train/lr`` is every group's);
    ``group_wds_differ``: the same for their scheduled weight decays (``train/wd/<group>``)."""
    world = world or World()
    schedule, names = training.step.schedule, group_names(training.step.optimizer)
    measured, extra_writers = schedule.measured, []
    if measured and world.is_main:  # its lr.csv is written as it logs, its t beside each LR
        extra_writers.append(LrLog(run_dir / "lr.csv", names, decays=schedule.scheduled_decay,
                                   momentum=schedule.momentum_fn is not None, purge_step=start_update))
    logger = RunLogger(
        run_dir,
        log_every_n_steps=1 if training.controls.logs_every_update else cfg.logger.log_every_n_steps,
        read_every_n_steps=cfg.logger.read_every_n_steps,
        max_updates=plan.max_updates,
        epoch_of=plan.epoch_of,
        group_names=names if group_lrs_differ else [],
        wd_group_names=names if group_wds_differ else [],
        writers=list(cfg.logger.writers),
        config=config,
        progress_bar=cfg.logger.progress_bar,
        start_update=start_update,
        resumed_val=resumed_val,
        world=world,
        times=schedule.position if measured else None,
        extra_writers=extra_writers,
        throughput=throughput(cfg, training, plan, world),
        ramp=plan.ramp,
    )
    return Loop(
        training.step, training.batches, training.validation, logger, training.checkpoints, training.controls, plan,
        val_every_n_epochs=cfg.trainer.val_every_n_epochs, objective=cfg.trainer.objective, world=world,
        # optimizer=target with a schedulefree class has no bn_batches key: it takes the shipped default
        bn_batches=cfg.optimizer.get("bn_batches", schedule_free.KEYS["bn_batches"].default),
    )
