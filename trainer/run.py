"""Builds a run from a composed config and trains it: the body of ``python -m trainer``."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from trainer.checkpoint import check_free_space, expected_checkpoint_bytes, load_checkpoint
from trainer.components import build
from trainer.config import RunPlan, plan_run, validate, warmup_warning
from trainer.data import Dataset, build_dataset, data_spec, first_batch
from trainer.data.batches import Batch
from trainer.data.text import TokenDataset
from trainer.distributed import World, device_of, launch_from_env, resolve_backend, resolve_strategy
from trainer.ema import WeightEMA
from trainer.errors import ConfigError, one_line
from trainer.finetune import check_unfreeze_strategy, describe_stages, init_weights, unfreeze_stages
from trainer.grad_spike import GradSpike
from trainer.hparams import hyperparameters
from trainer.hydra_app import remove_if_empty
from trainer.logger import RunLogger
from trainer.loop import Checkpointer, Loop, Loss, TrainStep
from trainer.lr_curve import PLATEAU_NOTE, draw_lr, lr_rows, lr_title, read_lr_csv, write_lr_csv
from trainer.lr_find import RangeTestMonitor, write_lr_find
from trainer.models import build_model
from trainer.optim import (
    build_optimizer,
    custom_groups,
    group_names,
    load_optimizer_state,
    trainable_parameters,
    write_group_table,
)
from trainer.precision import Precision, configure_cuda, resolve_device, resolve_precision
from trainer.rundir import hold_run_dir
from trainer.schedules import Schedule, build_schedule
from trainer.stopping import EarlyStopping, GradSpikeStop, NonFiniteStop, Preempted
from trainer.summary import FINISHED, describe_run, write_summary

#: ``loss=cross_entropy``'s target: its errors are the model's (its outputs), not the loss's.
CROSS_ENTROPY = "trainer.loop.CrossEntropy"


def cpu_threads(setting: int | str) -> int:
    """Intra-op threads: a number, or ``auto`` = $OMP_NUM_THREADS (parallel launchers set it per
    job), else the CPUs this process may run on (a SLURM task's allocation, not the whole node)."""
    if setting != "auto":
        return int(setting)
    return int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and every CUDA device)."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolved_config(cfg: DictConfig, plan: RunPlan) -> DictConfig:
    """The config as run: interpolations resolved, derived schedule lengths filled in, and the
    intra-op threads this process was given (``auto``: a parallel launcher's share of the cores)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.trainer.num_threads = torch.get_num_threads()
        out.schedule.total_steps = plan.total_steps
        out.schedule.warmup_steps = plan.warmup_steps
        out.schedule.warmup_ratio = None
    return out


def build_loss(cfg: DictConfig) -> Loss:
    """``loss._target_``, given ``trainer.label_smoothing`` when its signature names it."""
    loss_fn = build(cfg.loss, "loss", runtime={"label_smoothing": cfg.trainer.label_smoothing})
    if not callable(loss_fn):
        raise ConfigError("loss._target_", f"{cfg.loss._target_} built a {type(loss_fn).__name__}, which cannot be called")
    return loss_fn


def check_model_fits(model: nn.Module, loss_fn: Loss, batch: Batch, device: torch.device, loss_key: str) -> None:
    """One forward pass and loss on ``batch`` in eval mode without gradients (no parameter, buffer
    or generator changes): a model that does not take the data's inputs, or whose outputs the loss
    cannot score, is a config error before anything is written."""
    inputs, targets = (tensor.to(device) for tensor in batch)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                outputs = model(inputs)
            except Exception as error:
                raise ConfigError(
                    "model", f"does not take the data's inputs of shape {tuple(inputs.shape)}: {one_line(error)}"
                ) from None
            shape = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
            try:
                loss = loss_fn(outputs, targets)
            except Exception as error:
                raise ConfigError(
                    loss_key, f"cannot score the model's outputs ({shape}) against targets of shape "
                    f"{tuple(targets.shape)}: {one_line(error)}",
                ) from None
            if not (torch.is_tensor(loss) and loss.numel() == 1 and loss.is_floating_point()):
                raise ConfigError(loss_key, f"returned {type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}, "
                                  "not a scalar floating-point tensor")
    finally:
        model.train(was_training)


def build_optimization(
    cfg: DictConfig, *, num_train: int, input_shape: tuple[int, ...], num_classes: int, device: torch.device,
    model: nn.Module | None = None, fit_check: tuple[Loss, Batch] | None = None, world: World | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer, Schedule, RunPlan]:
    """Model, optimizer, schedule and the derived plan: shared by training and the preview.

    ``model``: a module to train instead of building ``cfg.model`` (``trainer.fit``).
    ``fit_check``: (loss, a batch) for :func:`check_model_fits`, run before the model is compiled.
    Under FSDP2 the model is sharded over ``world`` before the optimizer sees its parameters.
    """
    world = world or World()
    plan = plan_run(cfg, num_train, world.world_size)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, input_shape=input_shape, num_classes=num_classes)
    model = model.to(device)
    if fit_check is not None:
        loss_fn, batch = fit_check
        check_model_fits(model, loss_fn, batch, device, "loss" if cfg.loss._target_ != CROSS_ENTROPY else "model")
    if device.type == "cuda":
        configure_cuda(tf32=cfg.trainer.tf32)
        if len(input_shape) == 3:
            # NHWC lets cuDNN pick its Tensor Core convolution kernels without transposing each layer.
            model = model.to(memory_format=torch.channels_last)
    model = world.parallelize(model)
    if cfg.trainer.compile:
        # In place: the state_dict keys stay those of the eager model, so checkpoints load either way.
        model.compile(mode=None if cfg.trainer.compile is True else cfg.trainer.compile)
    stages = unfreeze_stages(cfg.trainer.unfreeze, interval=cfg.schedule.interval,
                             updates_per_epoch=plan.updates_per_epoch)
    optimizer = build_optimizer(cfg.optimizer, model, device, unfreeze=stages)
    schedule = build_schedule(
        cfg.schedule,
        peak_lr=cfg.optimizer.lr,
        total_steps=plan.total_steps,
        warmup_steps=plan.warmup_steps,
        updates_per_epoch=plan.updates_per_epoch,
        lr_scale=plan.lr_scale,
    )
    return model, optimizer, schedule, plan


def build_for_preview(cfg: DictConfig) -> tuple[torch.optim.Optimizer, Schedule, RunPlan]:
    """What the preview needs, from the config alone: no data is loaded, nothing is trained."""
    validate(cfg)
    spec = data_spec(cfg.data)
    _, optimizer, schedule, plan = build_optimization(
        cfg, num_train=spec.num_train, input_shape=spec.input_shape, num_classes=spec.num_classes,
        device=torch.device("cpu"),
    )
    return optimizer, schedule, plan


def schedule_fingerprint(cfg: DictConfig, plan: RunPlan) -> dict:
    """What fixes the LR of every update (the schedule's keys, η, the derived lengths and scales) and
    the optimizer settings the update uses with it."""
    resolved = OmegaConf.to_container(cfg.schedule, resolve=True)
    resolved.update(
        peak_lr=cfg.optimizer.lr,
        total_steps=plan.total_steps,
        warmup_steps=plan.warmup_steps,
        warmup_ratio=None,
        updates_per_epoch=plan.updates_per_epoch,
        lr_scale=plan.lr_scale,
        group_lr_scales={str(k): v for k, v in (cfg.optimizer.lr_scales or {}).items()},
        unfreeze=OmegaConf.to_container(cfg.trainer.unfreeze, resolve=True),
        # The examples per update over all ranks: any world size with the same global batch
        # continues the same run.
        global_batch_size=plan.global_batch_size,
    )
    # The optimizer's own settings (η and the scales are above): a resume with another weight
    # decay, betas or momentum would quietly change the run as much as a schedule change.
    resolved.update({
        f"optimizer.{k}": v for k, v in OmegaConf.to_container(cfg.optimizer, resolve=True).items()
        if k not in ("lr", "lr_scales", "lr_scaling", "reference_batch_size")
    })
    return resolved


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """``trainer.resume``: null = fresh run; ``auto`` = the run dir's last.pt if there is one."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / "last.pt"
        return last if last.exists() else None  # a last.pt that is a directory fails to load, loudly
    return Path(resume).expanduser()


#: Fingerprint keys added after checkpoints were first written, with the value that older
#: checkpoints (which lack them) were trained with.
FINGERPRINT_DEFAULTS = {
    "warmup_start_lr": 0.0, "temperature": 1.0, "lr_scale": 1.0, "group_lr_scales": {}, "unfreeze": [],
}


def check_schedule_unchanged(saved: dict, current: dict, path: Path, policy: str) -> None:
    """Refuse to resume onto a different schedule unless ``trainer.resume_schedule=override``."""
    # Older checkpoints did not record the optimizer's settings; load_optimizer_state still checks
    # their kind.
    unrecorded = {k: v for k, v in current.items() if k.startswith("optimizer.")}
    saved = {**FINGERPRINT_DEFAULTS, **unrecorded, **saved}
    if saved == current or policy == "override":
        return
    keys = sorted(set(saved) | set(current), key=str)
    diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k))
    raise ConfigError(
        "trainer.resume_schedule",
        f"{path} was trained with another schedule or optimizer setting ({diff}); resuming would change "
        "every later update. Pass trainer.resume_schedule=override to continue with the new settings "
        "(e.g. to branch a WSD cooldown)",
    )


def build_loop(
    cfg: DictConfig,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    plan: RunPlan,
    dataset: Dataset,
    precision: Precision,
    run_dir: Path,
    config: dict,
    fingerprint: dict,
    start_update: int = 0,
    loss_fn: Loss | None = None,
    world: World | None = None,
) -> Loop:
    """The loop (with its step and logger) exactly as ``python -m trainer`` runs it; the overhead
    benchmark builds it here too, so it times what users run."""
    world = world or World()
    t = cfg.trainer
    device = next(model.parameters()).device
    step = TrainStep(
        world.trainable(model),
        optimizer,
        schedule,
        precision,
        build_loss(cfg) if loss_fn is None else loss_fn,
        t.clip_grad_norm,
        world,
        grad_spike=None if t.grad_spike.factor is None else GradSpike(**t.grad_spike, device=device),
        ema=None if t.ema_decay is None else WeightEMA(model, t.ema_decay),  # from the weights the run starts with
    )
    # Last, and closed if the loop cannot be built: its event file is open from here on.
    logger = RunLogger(
        run_dir,
        log_every_n_steps=1 if cfg.schedule.name == "lr_range_test" else cfg.logger.log_every_n_steps,
        read_every_n_steps=cfg.logger.read_every_n_steps,
        max_updates=plan.max_updates,
        updates_per_epoch=plan.updates_per_epoch,
        group_names=group_names(optimizer),
        progress_bar=cfg.logger.progress_bar,
        start_update=start_update,
        world=world,
    )
    try:
        return Loop(
            model=model,
            optimizer=optimizer,
            schedule=schedule,
            step=step,
            dataset=dataset,
            plan=plan,
            logger=logger,
            precision=precision,
            checkpointer=Checkpointer(
                run_dir,
                every_n_steps=cfg.trainer.checkpoint_every_n_steps,
                every_n_epochs=cfg.trainer.checkpoint_every_n_epochs,
                keep_last_n=cfg.trainer.keep_last_n,
                config=config,
                fingerprint=fingerprint,
            ),
            batch_size=cfg.data.batch_size,
            accumulate_grad_batches=plan.accumulate_grad_batches,
            val_every_n_epochs=cfg.trainer.val_every_n_epochs,
            seed=cfg.seed,
            device=device,
            loader_workers=cfg.data.num_workers if cfg.data.loader == "dataloader" else None,
            flip_test=getattr(dataset, "flip_test", False),  # a source validates on mirrored images when it says so
            objective=cfg.trainer.objective,
            nonfinite=cfg.trainer.nonfinite,
            range_test=RangeTestMonitor() if cfg.schedule.name == "lr_range_test" else None,
            early_stopping=None if t.early_stopping.patience is None else EarlyStopping(**t.early_stopping),
            world=world,
        )
    except BaseException:
        logger.close()
        raise


def train(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, *, hparams_experiment: bool = True,
    model: nn.Module | None = None, dataset: Dataset | None = None,
) -> dict[str, float]:
    """Validate, build and train; returns the final metrics (``val/loss``, ``val/acc``, ...).

    Every check that can fail on user input runs before the first file is written. The run
    directory gets ``config.yaml`` (resolved), ``overrides.yaml`` (the command line's overrides,
    which name sweep jobs in reports), ``lr.csv`` (at the start) and ``lr.png`` (once completed):
    the LR of every update, from the schedule (:mod:`trainer.lr_curve`), TensorBoard events,
    checkpoints and ``metrics.json``; this run holds it (:mod:`trainer.rundir`) from before it
    reads a checkpoint there until it ends.
    ``hparams_experiment=False`` (a sweep's job) leaves the HParams table's columns to the sweep.
    ``model`` and ``dataset``: objects to train instead of building ``cfg.model`` and ``cfg.data``
    (``trainer.fit``).
    Under torchrun or SLURM every rank runs this; rank 0 alone writes (see :mod:`trainer.distributed`).
    """
    started = time.perf_counter()
    validate(cfg)
    launch = launch_from_env(os.environ)
    strategy = resolve_strategy(cfg.trainer.strategy, launch)
    check_unfreeze_strategy(cfg.trainer.unfreeze, strategy)
    torch.set_num_threads(cpu_threads(cfg.trainer.num_threads))
    device = device_of(launch if strategy != "single" else None, resolve_device(cfg.trainer.device))
    backend = resolve_backend(cfg.trainer.dist_backend, device)
    precision = resolve_precision(cfg.trainer.precision, device)
    if strategy == "fsdp" and precision.uses_grad_scaler:
        raise ConfigError(
            "trainer.precision", "fp16 loss scaling is not supported with trainer.strategy=fsdp: use bf16"
        )
    world = World.start(
        strategy, launch, backend=backend, shard_modules=tuple(cfg.trainer.fsdp.shard_modules),
        bf16_params=precision.dtype is torch.bfloat16,
    )
    try:
        own_dir, run_dir = run_dir, Path(world.broadcast(str(run_dir)))  # each rank's Hydra named it by its clock
        if own_dir != run_dir:
            remove_if_empty(own_dir)
        # Every rank works in rank 0's directory and only rank 0 writes there, so only it holds the lock.
        with hold_run_dir(run_dir) if world.is_main else contextlib.nullcontext():
            return _train(
                cfg, run_dir, overrides, world=world, device=device, precision=precision, started=started,
                hparams_experiment=hparams_experiment, model=model, dataset=dataset,
            )
    finally:
        world.close()


def saved_fingerprint(checkpoint: dict) -> dict:
    """A checkpoint's schedule fingerprint; one written before the global batch was recorded had
    data.batch_size × accumulate_grad_batches examples per update (it ran in one process)."""
    config = checkpoint["config"]
    examples = config["data"]["batch_size"] * config["trainer"]["accumulate_grad_batches"]
    return {"global_batch_size": examples, **checkpoint["schedule"]["fingerprint"]}


def _train(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None, *, world: World, device: torch.device,
    precision: Precision, started: float, hparams_experiment: bool, model: nn.Module | None,
    dataset: Dataset | None,
) -> dict[str, float]:
    checkpoint_path = resume_path(cfg.trainer.resume, run_dir)
    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    if dataset is None:
        dataset = build_dataset(cfg.data, cfg.seed, pin_memory=device.type == "cuda")
    if cfg.data.loader == "device":
        dataset = dataset.to(device)
    loss_fn = build_loss(cfg)
    model, optimizer, schedule, plan = build_optimization(
        cfg, num_train=dataset.num_train, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device, model=model, fit_check=(loss_fn, first_batch(dataset)), world=world,
    )
    fingerprint = schedule_fingerprint(cfg, plan)
    warning = warmup_warning(cfg, schedule)
    if warning and checkpoint is None and world.is_main:
        print(warning, file=sys.stderr)
    if checkpoint is not None:
        check_schedule_unchanged(saved_fingerprint(checkpoint), fingerprint, checkpoint_path, cfg.trainer.resume_schedule)
        try:  # before anything is written: a checkpoint of another model is a config error
            world.load_model_state(model, checkpoint["model"])
            load_optimizer_state(
                optimizer, world.shard_optimizer_state(checkpoint["optimizer"], trainable_parameters(optimizer))
            )
        except (RuntimeError, ValueError, KeyError) as error:
            raise ConfigError("trainer.resume", f"{checkpoint_path} does not fit this run: {one_line(error)}") from None
    elif cfg.trainer.init_from is not None:  # weights only: the optimizer and the schedule start at update 0
        left_out = init_weights(model, Path(cfg.trainer.init_from).expanduser(), strict=cfg.trainer.init_strict,
                                model_state=world.model_state(model), load=world.load_model_state)
        if left_out and world.is_main:
            print(left_out)
    if world.is_main:  # the only rank that writes
        expected = expected_checkpoint_bytes(model, optimizer, checkpoint, ema=cfg.trainer.ema_decay is not None)
        check_free_space(run_dir, expected, keep_last_n=cfg.trainer.keep_last_n)
    config = resolved_config(cfg, plan)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, run_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create(list(overrides or [])), run_dir / "overrides.yaml")
        if isinstance(dataset, TokenDataset):
            dataset.save_vocab(run_dir)
        # The exact LR of every update (the plateau schedule's before any cut), before a resume loads
        # its state; lr.png is drawn from it once the run completes (matplotlib would delay the start).
        write_lr_csv(lr_rows(optimizer, schedule, plan.max_updates), run_dir / "lr.csv")
        table = write_group_table(optimizer, run_dir)
        if custom_groups(cfg.optimizer, cfg.trainer.unfreeze):
            print(f"parameter groups (also in {run_dir / 'param_groups.md'}):\n{table}")
        if cfg.trainer.unfreeze:
            print(describe_stages(unfreeze_stages(cfg.trainer.unfreeze, interval=cfg.schedule.interval,
                                                  updates_per_epoch=plan.updates_per_epoch), plan.updates_per_epoch))
    start_update = checkpoint["update"] if checkpoint is not None else 0
    loop = build_loop(
        cfg, model=model, optimizer=optimizer, schedule=schedule, plan=plan, dataset=dataset, precision=precision,
        run_dir=run_dir, config=OmegaConf.to_container(config), fingerprint=fingerprint, start_update=start_update,
        loss_fn=loss_fn,
        world=world,
    )
    logger = loop.logger
    status, metrics, error_text = "failed", None, None
    try:
        if checkpoint is not None:
            loop.load_state_dict(checkpoint, restore_plateau=cfg.trainer.resume_schedule == "strict")
        metrics = loop.run(start_update)
        status = "early_stopped" if loop.early_stopped else "completed"
        if world.is_main:
            draw_lr(read_lr_csv(run_dir / "lr.csv"), run_dir / "lr.png", title=lr_title(cfg, plan),
                    note=PLATEAU_NOTE if schedule.plateau is not None else None, joins=schedule.phase_starts())
        if loop.range_test is not None and world.is_main:
            found = write_lr_find(run_dir, loop.range_test)
            if found["suggested_lr"] is None:
                logger.write(f"range test: {found['rule']}")
            else:
                metrics["suggested_lr"] = found["suggested_lr"]
                logger.write(
                    f"range test: suggested optimizer.lr={found['suggested_lr']:.3g} ({found['rule']}); "
                    f"see {run_dir / 'lr_find.png'}"
                )
        logger.log_hparams(hyperparameters(config, overrides or []), experiment=hparams_experiment)
        return metrics
    except Preempted:
        status = "preempted"
        raise
    except NonFiniteStop as stop:
        status = "stopped_grad_spike" if isinstance(stop, GradSpikeStop) else "stopped_nonfinite"
        raise
    except Exception as error:
        error_text = f"{type(error).__name__}: {one_line(error)}"
        raise
    finally:
        # On a failure (a full disk above all) closing the logs or writing metrics.json may fail
        # too: that must not hide the error that ended the run.
        quiet = contextlib.suppress(OSError) if status == "failed" else contextlib.nullcontext()
        with quiet:
            logger.close()
        if world.is_main:
            wall_time_s = round(time.perf_counter() - started, 3)
            with quiet:
                write_summary(run_dir, status, metrics=metrics, wall_time_s=wall_time_s, error=error_text)
            if status in FINISHED:
                # A resumed run's earlier validations are in its event files only.
                history = logger.val_history if start_update == 0 else None
                print(describe_run(run_dir, metrics, wall_time_s, status=status, history=history))
