"""Trains a checked config: the body of ``python -m trainer`` and ``trainer.fit``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from trainer.app.build import (
    FitCheck,
    Optimization,
    Training,
    build_loop,
    build_loss,
    build_optimization,
    build_training,
)
from trainer.app.threads import CpuClock, pick_threads
from trainer.app.validate import validate, warmup_warning
from trainer.data import Dataset, build_dataset, first_batch, has_validation
from trainer.data.named import has_token_rows
from trainer.distributed import World, device_of, launch_from_env, resolve_backend, resolve_strategy
from trainer.errors import FINISHED, one_line, outcome
from trainer.files import write_atomic
from trainer.optim.groups import custom_groups, write_group_table
from trainer.optim.unfreeze import describe_stages
from trainer.plan import RunPlan
from trainer.rundir.branch import KEY as BRANCH_KEY
from trainer.rundir.branch import check_kept, check_lr_continues, check_same_branch, lineage, start_checkpoint
from trainer.rundir.checkpoint import check_free_space, expected_checkpoint_bytes, load_checkpoint
from trainer.rundir.hparams import hyperparameters
from trainer.rundir.init_from import init_weights
from trainer.rundir.lock import hold_run_dir, remove_if_empty
from trainer.rundir.resume import check_run_unchanged, check_schedule_unchanged, schedule_fingerprint
from trainer.rundir.summary import describe_run, write_summary
from trainer.schedules.curve import (
    PLATEAU_NOTE,
    draw_lr,
    lr_columns,
    lr_rows,
    lr_title,
    phase_joins,
    read_lr_csv,
    sampled_rows,
    write_lr_csv,
)
from trainer.training.precision import Precision, resolve_device, resolve_precision


def resolved_config(cfg: DictConfig, plan: RunPlan) -> DictConfig:
    """The config as run: interpolations resolved, derived schedule lengths filled in, and the
    intra-op threads this process was given (``auto``: a parallel launcher's share of the cores)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.trainer.num_threads = torch.get_num_threads()
        out.schedule.total_steps = plan.total_steps
        out.schedule.warmup_steps = plan.warmup_steps
        out.schedule.warmup_ratio = None
        if out.schedule.get("min_lr_ratio") is not None:  # the floor as the run binds it
            out.schedule.min_lr = out.schedule.min_lr_ratio * out.optimizer.lr
    return out


def train(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None, *, hparams_experiment: bool = True,
    model: nn.Module | None = None, dataset: Dataset | None = None, cpu_since: CpuClock | None = None,
) -> dict[str, float]:
    """Validate, build and train; returns the final metrics (``val/loss``, ``val/acc``, ...).

    Every check that can fail on user input runs before the first file is written. The run
    directory gets ``config.yaml`` (resolved), ``overrides.yaml`` (the command line's overrides,
    which name sweep jobs in reports), ``lr.csv`` (at the start) and ``lr.png`` (once completed):
    the LR of every update, from the schedule (:mod:`trainer.schedules.curve`), the logs,
    checkpoints and ``metrics.json``; this run holds it (:mod:`trainer.rundir.lock`) from before it
    reads a checkpoint there until it ends.
    ``hparams_experiment=False`` (a sweep's job) leaves the HParams table's columns to the sweep.
    ``model`` and ``dataset``: objects to train instead of building ``cfg.model`` and ``cfg.data``
    (``trainer.fit``). ``cpu_since``: when the process started, for ``trainer.num_threads=auto``
    (:mod:`trainer.app.threads`; default: now).
    Under torchrun or SLURM every rank runs this; rank 0 alone writes (see :mod:`trainer.distributed`).
    """
    started, cpu_since = time.perf_counter(), cpu_since or CpuClock.now()
    launch = launch_from_env(os.environ)
    strategy = resolve_strategy(cfg.trainer.strategy, launch)
    validate(cfg, strategy=strategy)
    device = device_of(launch if strategy != "single" else None, resolve_device(cfg.trainer.device))
    backend = resolve_backend(cfg.trainer.dist_backend, device)
    precision = resolve_precision(cfg.trainer.precision, device)
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
                hparams_experiment=hparams_experiment, model=model, dataset=dataset, cpu_since=cpu_since,
            )
    finally:
        world.close()


@dataclass(frozen=True)
class Prepared:
    """A run built, restored and checked, its files written: what the loop starts from."""

    built: Optimization
    training: Training
    config: DictConfig  # as run: resolved, derived lengths filled in
    start_update: int
    resumed_val: dict[str, float] | None  # val/* logged at the resumed checkpoint's own update
    group_lrs_differ: bool  # decided once per run, from its whole LR curve: one chart per group, or train/lr alone
    lineage: dict | None = None  # a branch's parent (trainer.branch_from), kept when the branch resumes
    group_wds_differ: bool = False  # the same for scheduled weight decays: train/wd/<group>, or train/wd alone


def _train(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None, *, world: World, device: torch.device,
    precision: Precision, started: float, hparams_experiment: bool, model: nn.Module | None,
    dataset: Dataset | None, cpu_since: CpuClock | None,
) -> dict[str, float]:
    run = _prepare(cfg, run_dir, overrides, world=world, device=device, precision=precision, model=model,
                   dataset=dataset, cpu_since=cpu_since)
    status, metrics, error_text, loop = "failed", None, None, None
    try:
        loop = build_loop(
            cfg, run.training, plan=run.built.plan, run_dir=run_dir, config=OmegaConf.to_container(run.config),
            start_update=run.start_update, resumed_val=run.resumed_val, world=world,
            group_lrs_differ=run.group_lrs_differ, group_wds_differ=run.group_wds_differ,
        )
        metrics = loop.run(run.start_update)
        status = loop.ending.status if loop.ending is not None else "completed"
        if world.is_main:
            _finish(cfg, run, run_dir, metrics, loop.logger.write)
        loop.logger.log_hparams(hyperparameters(run.config, overrides or []), experiment=hparams_experiment)
        return metrics
    except Exception as error:
        status = outcome(error).status
        if status == "failed":
            error_text = f"{type(error).__name__}: {one_line(error)}"
        raise
    finally:
        # On a failure (a full disk above all) closing the logs or writing metrics.json may fail
        # too: that must not hide the error that ended the run. A run that ended well but whose
        # logs fail to close has failed, and says so in metrics.json before the error goes on.
        close_error = None
        if loop is not None:
            try:
                loop.logger.close(status)
            except Exception as error:
                if status in FINISHED:
                    close_error, status, error_text = error, "failed", f"{type(error).__name__}: {one_line(error)}"
        quiet = contextlib.suppress(Exception) if status == "failed" else contextlib.nullcontext()
        if world.is_main:
            wall_time_s = round(time.perf_counter() - started, 3)
            with quiet:
                write_summary(run_dir, status, metrics=metrics, wall_time_s=wall_time_s, error=error_text,
                              lineage=run.lineage)
            if status in FINISHED:
                # A resumed run's earlier validations are in its logs only.
                history = loop.logger.val_history if run.start_update == 0 else None
                print(describe_run(run_dir, metrics, wall_time_s, status=status, history=history,
                                   writers=list(cfg.logger.writers)))
        if close_error is not None:
            raise close_error


def _prepare(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None, *, world: World, device: torch.device,
    precision: Precision, model: nn.Module | None, dataset: Dataset | None, cpu_since: CpuClock | None,
) -> Prepared:
    """Build the run, restore its checkpoint (or ``init_from``'s weights) and check that its
    checkpoints fit on the disk, all before writing anything; then write the run's files."""
    checkpoint_path, branching = start_checkpoint(cfg.trainer, run_dir)
    start_key = BRANCH_KEY if branching else "trainer.resume"
    checkpoint = load_checkpoint(checkpoint_path, start_key) if checkpoint_path is not None else None
    resumed_threads = checkpoint["config"]["trainer"]["num_threads"] if checkpoint is not None else None
    torch.set_num_threads(pick_threads(cfg.trainer.num_threads, since=cpu_since, resumed=resumed_threads))
    if dataset is None:
        dataset = build_dataset(cfg.data, cfg.seed, pin_memory=device.type == "cuda")
    if cfg.data.loader == "device":
        dataset = dataset.to(device)
    loss_fn, batch = build_loss(cfg), first_batch(dataset)
    built = build_optimization(
        cfg, num_train=dataset.num_train, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        device=device, model=model, world=world, token_rows=has_token_rows(batch),
        fit_check=FitCheck(loss_fn, batch, validates=has_validation(dataset), flip=getattr(dataset, "flip_test", False)),
    )
    fingerprint = schedule_fingerprint(cfg, built.plan)
    measured = built.schedule.measured  # its lr.csv is written as it runs
    lrs = planned_lr_rows(built) if world.is_main else []  # rank 0's to write
    config = resolved_config(cfg, built.plan)
    if checkpoint is not None:
        _check_continues(cfg, built, checkpoint, checkpoint_path, fingerprint, config, branching=branching)
        with open_dict(config):
            config.lineage = lineage(checkpoint_path, checkpoint) if branching else checkpoint["config"].get("lineage")
    elif cfg.trainer.init_from is not None:  # weights only: the optimizer and the schedule start at update 0
        left_out = init_weights(built.model, Path(cfg.trainer.init_from).expanduser(), strict=cfg.trainer.init_strict,
                                model_state=world.model_state(built.model), load=world.load_model_state)
        if left_out and world.is_main:
            print(left_out)
    warning = warmup_warning(cfg, built.schedule)
    if warning and checkpoint is None and world.is_main:
        print(warning, file=sys.stderr)
    training = build_training(
        cfg, built, dataset=dataset, precision=precision, run_dir=run_dir, config=OmegaConf.to_container(config),
        fingerprint=fingerprint, loss_fn=loss_fn, world=world,
    )
    # A checkpoint of another model is a config error here, before anything is written.
    start_update = training.checkpoints.restore(checkpoint, checkpoint_path, start_key) if checkpoint is not None else 0
    # On every rank: a control's state may be gathered from all of them (a stream's positions).
    expected = expected_checkpoint_bytes(built.model, built.optimizer, checkpoint, controls=training.controls)
    if world.is_main:  # the only rank that writes
        check_free_space(run_dir, expected, keep_last_n=cfg.trainer.keep_last_n)
        write_run_files(cfg, config, overrides, built, dataset, run_dir, lrs if not measured else None)
    resumed_val = checkpoint["logs"]["val"] if checkpoint is not None else None
    # A plateau's cuts scale every group alike: groups that start alike stay alike.
    group_lrs_differ = bool(lrs) and len(lr_columns(lrs)) > 1
    return Prepared(built, training, config, start_update, resumed_val, group_lrs_differ,
                    lineage=OmegaConf.to_container(config.lineage) if config.get("lineage") else None,
                    group_wds_differ=bool(lrs) and len(lr_columns(lrs, prefix="wd/")) > 1)


def planned_lr_rows(built: Optimization) -> list[dict[str, float]]:
    """The exact LR of every update (the plateau schedule's before any cut, so before a resume
    restores its cuts): lr.csv before training, lr.png from it once the run completes (matplotlib
    would delay the start; a long run's rows need not stay in memory). A schedule measured as the
    run goes (seconds, padded tokens): only its shape, as its run writes its rows as it logs them
    (:class:`~trainer.schedules.curve.LrLog`)."""
    if built.schedule.measured:
        return sampled_rows(built.optimizer, built.schedule)
    return lr_rows(built.optimizer, built.schedule, built.plan.max_updates)


def _check_continues(
    cfg: DictConfig, built: Optimization, checkpoint: dict, path: Path, fingerprint: dict, config: DictConfig, *,
    branching: bool,
) -> None:
    """A resume continues its run unchanged (the schedule unless ``trainer.resume_schedule=override``);
    a branch may change the schedule, but not the LR at its first update, nor anything else."""
    saved = checkpoint["schedule"]["fingerprint"]
    if branching:
        check_kept(saved, fingerprint, path)
        update = int(checkpoint["update"])
        row = lr_rows(built.optimizer, built.schedule, update + 1, first=update)[0]  # as its lr.csv will have it
        check_lr_continues(path, update, row, saved, cfg.trainer.branch_lr_jump)
    else:
        check_same_branch(cfg.trainer.branch_from, checkpoint["config"].get("lineage"), path)
        check_schedule_unchanged(saved, fingerprint, path, cfg.trainer.resume_schedule)
    check_run_unchanged(checkpoint["config"], OmegaConf.to_container(config), path, list(cfg.trainer.resume_accept))


def _finish(cfg: DictConfig, run: Prepared, run_dir: Path, metrics: dict[str, float], write: Callable[[str], None]) -> None:
    """After the last update, on rank 0: ``lr.png``, and what each control leaves (``lr_find.json``)."""
    schedule = run.built.schedule
    rows = read_lr_csv(run_dir / "lr.csv")
    draw_lr(rows, run_dir / "lr.png", title=lr_title(cfg, run.built.plan),
            note=PLATEAU_NOTE if schedule.plateau is not None else None, joins=phase_joins(rows, schedule))
    for control in run.training.controls:
        control.finish(run_dir, metrics, write)


def write_run_files(
    cfg: DictConfig, config: DictConfig, overrides: list[str] | None, built: Optimization, dataset: Dataset,
    run_dir: Path, lrs: list[dict[str, float]] | None,
) -> None:
    """What the run directory holds besides logs and checkpoints, written on rank 0 before training:
    ``config.yaml``, ``overrides.yaml``, ``lr.csv`` (``lrs``; None: a schedule measured as the run goes, whose
    rows its run writes as it logs them), ``param_groups.md``, and what the data keeps there (a
    vocabulary)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    write_atomic(run_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides or []))))
    if hasattr(dataset, "write_files"):
        dataset.write_files(run_dir)
    if lrs is not None:
        write_lr_csv(lrs, run_dir / "lr.csv")
    table = write_group_table(built.optimizer, run_dir)
    if custom_groups(cfg.optimizer, cfg.trainer.unfreeze):
        print(f"parameter groups (also in {run_dir / 'param_groups.md'}):\n{table}")
    if built.stages:
        print(describe_stages(built.stages, built.plan.updates_per_epoch))
