"""``python -m trainer.preview schedule=NAME [overrides]``: the LR of every update, without training.

Takes the same overrides as ``python -m trainer``, derives the run's length the same way, and
writes ``lr.csv`` (one row per optimizer update: update, t, the LR of every parameter group, and
the momentum when it is scheduled) and ``lr.png`` to the run directory, then prints a summary.
``-m schedule=a,b,c`` previews several and also draws them on one plot (``SWEEP_DIR/lr.png``).

A schedule in seconds (``schedule.interval=time``) is drawn against a throughput the user gives,
``preview.updates_per_second``: update u at t = u / that (the run reads t from its clock), and the
plot and summary say it is an estimate. A ``trainer.max_time`` budget ends the preview where that
throughput spends it. Tokens of padded rows of several lengths (``schedule.interval=token`` or
``trainer.max_tokens`` on ``data=hf_dataset`` unpacked) likewise, against ``preview.tokens_per_update``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from trainer.app.cli import run_as_process
from trainer.components import CONFIG_DIR
from trainer.errors import EXIT_CONFIG, ConfigError, refuse, require
from trainer.params import Param, check_params
from trainer.plan import UNBOUNDED, RunPlan
from trainer.rundir.lock import remove_created_run_dir, remove_if_empty
from trainer.schedules.curve import (
    PLATEAU_NOTE,
    draw_lr,
    lr_columns,
    lr_rows,
    lr_title,
    phase_joins,
    read_lr_csv,
    write_lr_csv,
)


def build_optimizers_without_dynamo() -> None:
    """Let torch build this process's optimizers without importing ``torch._dynamo`` (1.5-1.8 s
    on 2 vCPUs: most of what a preview would take beyond importing torch).

    ``torch.optim.Optimizer.add_param_group`` is wrapped by ``torch._disable_dynamo``, which on
    its first call imports ``torch._dynamo`` to wrap the method in ``torch._dynamo.disable``, and
    caches that on the method as ``__dynamo_disable``. That wrapper only keeps a compiled function
    from tracing into the method; a preview compiles and steps nothing, so the cache is given the
    method itself and the optimizer is built exactly as training builds it. It lasts for the whole
    process, so only the preview's entry point calls this (never :func:`write_preview`, which
    tests call in their own process). Should torch cache it otherwise, the preview imports
    ``torch._dynamo`` as before (the same rows, slower), which ``tests/test_startup.py`` reports.
    """
    import torch

    if "torch._dynamo" in sys.modules:  # imported anyway (e.g. by torchvision): nothing to save
        return
    method = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if method is not None:
        setattr(method, "__dynamo_disable", method)


#: ``preview.*`` (conf/preview.yaml): what only the preview reads, taken out before the trainer's checks.
PREVIEW: dict[str, Param] = {
    "updates_per_second": Param(None, "the throughput a schedule in seconds (schedule.interval=time) or a "
                                "trainer.max_time budget is drawn against: update u at t = u / this; an estimate "
                                "(e.g. from a run's progress bar)", float, low=0, low_open=True, extra=(None,)),
    "tokens_per_update": Param(None, "the tokens per update a schedule or budget in tokens of padded rows is drawn "
                               "against: update u at t = u × this; an estimate (e.g. a run's train/tokens over its "
                               "updates)", float, low=0, low_open=True, extra=(None,)),
}


def take_preview_keys(cfg: DictConfig) -> dict[str, float | None]:
    """Check ``preview.*`` and take it out of ``cfg`` (the trainer's checks know no such node);
    returns its values by key (``updates_per_second``, ``tokens_per_update``)."""
    node = cfg.get("preview") or {}
    check_params(PREVIEW, node, "preview", owner="the preview")
    with open_dict(cfg):
        cfg.pop("preview", None)
    return {key: node.get(key) for key in PREVIEW}


def write_preview(cfg: DictConfig, out_dir: Path, *, updates_per_second: float | None = None,
                  tokens_per_update: float | None = None) -> list[dict[str, float]]:
    """Compute every update's LRs through the same code path training uses; write CSV and PNG.
    ``updates_per_second`` and ``tokens_per_update``: the estimates a schedule in seconds or in
    tokens of padded rows is drawn against."""
    # Only here: --help and --cfg never call this, and need not wait for torch.
    from trainer.app.build import build_for_preview
    from trainer.optim.groups import group_names

    optimizer, schedule, plan = build_for_preview(cfg)
    schedule, updates, estimate = estimated_updates(cfg, schedule, plan, updates_per_second=updates_per_second,
                                                    tokens_per_update=tokens_per_update)
    rows = lr_rows(optimizer, schedule, updates)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_lr_csv(rows, out_dir / "lr.csv")
    note = PLATEAU_NOTE if schedule.plateau is not None else None
    joins = phase_joins(rows, schedule)
    draw_lr(rows, out_dir / "lr.png", title=lr_title(cfg, plan) + (f"\n{estimate}" if estimate else ""), note=note,
            joins=joins)
    lrs = [r[f"lr/{group_names(optimizer)[0]}"] for r in rows]
    print(
        f"{cfg.schedule.name}: {updates} updates ({plan.updates_per_epoch}/epoch"
        f"{' at the full batch' if plan.ramp is not None else ''}), "
        f"interval={cfg.schedule.interval}, T={plan.total_steps}, W={plan.warmup_steps}\n"
        + (f"  {estimate}\n" if estimate else "")
        + f"  lr first={lrs[0]:.6g} peak={max(lrs):.6g} (update {lrs.index(max(lrs))}) last={lrs[-1]:.6g}\n"
        + (f"  phases: {schedule.phases[0][0]}, then " + ", ".join(f"{n} from update {u}" for u, n in joins) + "\n"
           if joins else "")
        + group_lines(rows)
        + (f"  {plan.ramp.describe()}\n" if plan.ramp is not None else "")
        + (f"  {note}\n" if note else "")
        + f"  wrote {out_dir / 'lr.csv'} and {out_dir / 'lr.png'}"
    )
    return rows


def group_lines(rows: list[dict[str, float]]) -> str:
    """One line per distinct group LR curve when the groups' curves differ (scales, their own
    schedules), and per weight-decay curve when it is scheduled: ``lr/GROUP: first, peak, last``."""
    lines = []
    for prefix in ("lr/", "wd/"):
        curves = lr_columns(rows, prefix=prefix)
        if prefix == "wd/" or len(curves) > 1:
            for columns in curves:
                values = [r[columns[0]] for r in rows]
                lines.append(f"  {' = '.join(columns)}: first={values[0]:.6g} peak={max(values):.6g} "
                             f"(update {values.index(max(values))}) last={values[-1]:.6g}\n")
    return "".join(lines)


def estimated_updates(
    cfg: DictConfig, schedule: Any, plan: RunPlan, *, updates_per_second: float | None, tokens_per_update: float | None,
) -> tuple[Any, int, str]:
    """The schedule to preview, its updates and, when an estimate decides them, what to say about
    it. A schedule in seconds reads t = u / ``updates_per_second``, one in tokens of padded rows
    t = u × ``tokens_per_update`` (each required for it); a ``trainer.max_time`` or (padded)
    ``trainer.max_tokens`` budget ends at the first update whose estimated count reaches it."""
    max_time, max_tokens, updates, notes = cfg.trainer.get("max_time"), cfg.trainer.get("max_tokens"), plan.max_updates, []
    if schedule.interval == "time":
        require(updates_per_second is not None, "preview.updates_per_second",
                "a schedule in seconds is drawn against a throughput: give the optimizer updates per second you "
                "expect (e.g. preview.updates_per_second=20, from a run's progress bar)")
        schedule = schedule.counting(count=lambda update: update / updates_per_second)
    if (plan.measured and schedule.interval == "token") or (max_tokens is not None and updates == UNBOUNDED):
        require(tokens_per_update is not None, "preview.tokens_per_update",
                "the tokens of padded rows are counted as the run trains them: give the tokens per update you expect "
                "(e.g. preview.tokens_per_update=20000, a run's train/tokens over its updates)")
        if schedule.interval == "token":
            schedule = schedule.counting(count=lambda update: update * tokens_per_update)
        if max_tokens is not None:
            updates = min(updates, math.ceil(max_tokens / tokens_per_update))
        notes.append(f"t = update × {tokens_per_update:g} tokens: an estimated count (preview.tokens_per_update)")
    if updates_per_second is not None:
        if max_time is not None:
            updates = min(updates, math.ceil(max_time * updates_per_second))
        notes.append(f"t = update / ({updates_per_second:g} updates/s): an estimated throughput "
                     "(preview.updates_per_second)")
    elif max_time is not None:
        notes.append(f"trainer.max_time={max_time} s may end the run sooner")
    return schedule, updates, "; ".join(notes)


class CombinedPlot(Callback):
    """After a ``-m`` preview, draw every job's group-0 LR on one plot in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from matplotlib.figure import Figure  # only here: Hydra builds this callback for every preview

        sweep_dir = Path(config.hydra.sweep.dir)
        job_dirs = sorted(p for p in sweep_dir.iterdir() if (p / "lr.csv").is_file())
        if not job_dirs:  # every job was refused: nothing to draw
            return
        fig = Figure(figsize=(10, 4.5))
        ax = fig.subplots()
        for job_dir in job_dirs:
            rows = read_lr_csv(job_dir / "lr.csv")
            lr_column = next(k for k in rows[0] if k.startswith("lr/"))
            label = job_dir.name.split("_", 1)[-1]
            ax.plot([r["update"] for r in rows], [r[lr_column] for r in rows], label=label)
        ax.set_xlabel("optimizer update")
        ax.set_ylabel("learning rate")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        # Not tight_layout(): it warns (on stderr) when the legend outside the axes is wide.
        fig.savefig(sweep_dir / "lr.png", dpi=110, bbox_inches="tight")
        print(f"wrote {sweep_dir / 'lr.png'} with every schedule of the sweep")


#: The jobs of this process's ``-m`` preview refused for their config: the sweep then exits 2.
refused_jobs: list[str] = []


@hydra.main(config_path=str(CONFIG_DIR), config_name="preview", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    build_optimizers_without_dynamo()
    try:
        write_preview(cfg, out_dir, **take_preview_keys(cfg))
    except ConfigError as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            remove_created_run_dir()
            refuse(error)
        # In a sweep this job alone fails: the others' previews stand, its empty directory goes.
        remove_if_empty(out_dir)
        print(f"error: {error}", file=sys.stderr)
        refused_jobs.append(out_dir.name)


def cli() -> None:
    """``python -m trainer.preview``: exit 2 after a sweep in which any job was refused."""
    run_as_process(main)
    if refused_jobs:
        sys.exit(EXIT_CONFIG)


if __name__ == "__main__":
    cli()
