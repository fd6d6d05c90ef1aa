"""``python -m trainer [overrides]``: the Hydra entry point, nothing else."""

from __future__ import annotations

import errno
import math
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer.errors import EXIT_NO_SPACE, ConfigError, NoSpace, one_line
from trainer.hydra_app import CONFIG_DIR, as_config_error, remove_created_run_dir, run_as_process
from trainer.rundir import RunDirInUse
from trainer.stopping import EXIT_NONFINITE, EXIT_PREEMPTED, NonFiniteStop, Preempted
from trainer.summary import write_summary

#: What a failed or diverged sweep job returns: the worst value of the minimised objective.
#: Not NaN: Optuna fails a NaN trial, and its Hydra sweeper then crashes telling it so.
FAILED_OBJECTIVE = math.inf


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Train one job; returns ``trainer.objective`` so Hydra sweepers can optimise it."""
    # Only here: --help and --cfg never call this, and need not wait for torch to import.
    from trainer.distributed import launch_rank
    from trainer.run import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        # Unresolved: an override such as optimizer.lr=${nope} is the config's error, found by its checks.
        overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
        metrics = train(cfg, run_dir, overrides=overrides, hparams_experiment=not in_sweep)
    except RunDirInUse as error:  # the directory is another run's: write nothing there
        print(f"error: {error}", file=sys.stderr)
        if in_sweep:
            return FAILED_OBJECTIVE
        sys.exit(2)
    except (ConfigError, OmegaConfBaseException) as error:  # e.g. an interpolation that does not resolve
        error = as_config_error(error)
        if launch_rank() == 0:  # every rank finds the same error: one line, from rank 0
            print(f"error: {error}", file=sys.stderr)
        if in_sweep:
            # Fail this job only: the sweep goes on, its report lists the job as failed, and the
            # sweep exits 2 at its end (trainer.compare.SweepReport).
            write_summary(run_dir, "failed", error=str(error))
            return FAILED_OBJECTIVE
        remove_created_run_dir()
        sys.exit(2)
    except Preempted as stop:
        if launch_rank() == 0:
            print(f"{stop}; wrote {run_dir / 'last.pt'}. Continue with: "
                  f"python -m trainer <same overrides> hydra.run.dir={run_dir} trainer.resume=auto", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteStop as stop:
        if launch_rank() == 0:
            print(f"stopped: {stop}", file=sys.stderr)
        if in_sweep:  # a diverging LR is one result of an LR sweep, not the end of it
            return FAILED_OBJECTIVE
        sys.exit(EXIT_NONFINITE)
    except Exception as error:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            # NoSpace (a checkpoint's) names the space needed; a failed log write only knows the disk is full.
            why = error if isinstance(error, NoSpace) else f"no space left in {run_dir}: {one_line(error)}"
            print(f"error: {why}", file=sys.stderr)
            if in_sweep:  # train() recorded the error in metrics.json, if the disk took it
                return FAILED_OBJECTIVE
            remove_created_run_dir()  # refused at the start: nothing was written
            sys.exit(EXIT_NO_SPACE)
        if not in_sweep:
            raise
        # A crash (or trainer.nonfinite=raise) fails its job only: Hydra would re-raise it after
        # the last job and skip the sweep's report.
        traceback.print_exc()
        write_summary(run_dir, "failed", error=f"{type(error).__name__}: {one_line(error)}")
        return FAILED_OBJECTIVE
    objective = metrics.get(cfg.trainer.objective, math.nan)  # NaN: trained without validation data
    # A run that diverged while skipping its bad updates still completes, with a NaN val/loss.
    return objective if math.isfinite(objective) else FAILED_OBJECTIVE


def cli() -> None:
    """The ``trainer`` command (pyproject's script) and ``python -m trainer``: every config error,
    Hydra's too, is one line and exit code 2."""
    run_as_process(main)


if __name__ == "__main__":
    cli()
