"""``python -m trainer [overrides]``: the Hydra entry point, nothing else."""

from __future__ import annotations

import math
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer.app.cli import as_config_error, run_as_process
from trainer.app.threads import CpuClock
from trainer.components import CONFIG_DIR
from trainer.errors import (
    EXIT_CRASH,
    EXIT_NO_SPACE,
    ConfigError,
    NonFiniteStop,
    NoSpace,
    Preempted,
    RunDirInUse,
    one_line,
    outcome,
)
from trainer.rundir.lock import remove_created_run_dir
from trainer.rundir.summary import write_summary

#: What a failed or diverged sweep job returns: the worst value of the minimised objective.
#: Not NaN: Optuna fails a NaN trial, and its Hydra sweeper then crashes telling it so.
FAILED_OBJECTIVE = math.inf


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Train one job; returns ``trainer.objective`` so Hydra sweepers can optimise it."""
    cpu_since = CpuClock.now()  # trainer.num_threads=auto counts what other processes use from here
    # Only here: --help and --cfg never call this, and need not wait for torch to import.
    from trainer.app.run import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        # Unresolved: an override such as optimizer.lr=${nope} is the config's error, found by its checks.
        overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
        metrics = train(cfg, run_dir, overrides=overrides, hparams_experiment=not in_sweep, cpu_since=cpu_since)
    except Exception as error:
        return ended(error, run_dir, in_sweep=in_sweep)
    objective = metrics.get(cfg.trainer.objective, math.nan)  # NaN: trained without validation data
    # A run that diverged while skipping its bad updates still completes, with a NaN val/loss.
    return objective if math.isfinite(objective) else FAILED_OBJECTIVE


def ended(error: Exception, run_dir: Path, *, in_sweep: bool) -> float:
    """Say how ``error`` ended the run (one line, from rank 0) and exit with the code
    :func:`trainer.errors.outcome` gives it. In a sweep only the job fails: it returns the worst
    objective, and the sweep's report lists it (:class:`trainer.compare.SweepReport`)."""
    from trainer.distributed import launch_rank

    if isinstance(error, OmegaConfBaseException):  # e.g. an interpolation that does not resolve
        error = as_config_error(error)
    exit_code = outcome(error).exit_code
    if exit_code == EXIT_CRASH:
        if not in_sweep:
            raise error  # a crash (or trainer.nonfinite=raise) shows its traceback
        # A crash fails its job only: Hydra would re-raise it after the last job and skip the report.
        traceback.print_exc()
        write_summary(run_dir, "failed", error=f"{type(error).__name__}: {one_line(error)}")
        return FAILED_OBJECTIVE
    if launch_rank() == 0:  # every rank finds the same error: one line, from rank 0
        print(_line(error, run_dir), file=sys.stderr)
    if isinstance(error, Preempted):  # the whole sweep stops: its jobs resume with the same command
        sys.exit(exit_code)
    if in_sweep:
        # The run's own summary says how it stopped; a config error (not the directory of another
        # run, which is not ours to write in) or a full disk before training have none yet.
        if isinstance(error, ConfigError) and not isinstance(error, RunDirInUse):
            write_summary(run_dir, "failed", error=str(error))
        return FAILED_OBJECTIVE
    if isinstance(error, ConfigError) and not isinstance(error, RunDirInUse) or exit_code == EXIT_NO_SPACE:
        remove_created_run_dir()  # refused at the start: nothing was written
    sys.exit(exit_code)


def _line(error: Exception, run_dir: Path) -> str:
    """The one line that says why the run ended."""
    if isinstance(error, Preempted):
        return (f"{error}; wrote {run_dir / 'last.pt'}. Continue with: python -m trainer <same overrides> "
                f"hydra.run.dir={run_dir} trainer.resume=auto")
    if isinstance(error, NonFiniteStop):
        return f"stopped: {error}"
    if outcome(error).exit_code == EXIT_NO_SPACE and not isinstance(error, NoSpace):
        # NoSpace (a checkpoint's) names the space needed; a failed log write only knows the disk is full.
        return f"error: no space left in {run_dir}: {one_line(error)}"
    return f"error: {error}"


def cli() -> None:
    """The ``trainer`` command (pyproject's script) and ``python -m trainer``: every config error,
    Hydra's too, is one line and exit code 2."""
    run_as_process(main)


if __name__ == "__main__":
    cli()
