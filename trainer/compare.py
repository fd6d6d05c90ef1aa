"""``python -m trainer.compare SWEEP_DIR``: one report for every job of a sweep.

Reads each job directory's logs (through its log writers), ``config.yaml``, ``overrides.yaml`` and ``metrics.json``
and writes, into SWEEP_DIR (or ``--out``): ``report.md`` (jobs sorted by the objective),
``report.csv``, ``lr.png`` (LR against update, one line per job) and ``loss.png`` (train and val
loss; cooldown branches drawn from their update N on, over their parent run's curve). Jobs still running or that failed are listed with their status instead of breaking it. A
directory with no runs, or one run's own directory, is refused in one line (exit 2), nothing written.
:class:`SweepReport` does the same at the end of every ``python -m trainer -m ...`` sweep and
sets the sweep's exit code from how its jobs ended.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from trainer.errors import FINISHED, OneLineParser, refuse, sweep_exit_code
from trainer.files import figure_bytes, write_atomic
from trainer.rundir.hparams import read_overrides
from trainer.rundir.summary import SUMMARY_FILE, read_summary
from trainer.rundir.writers import optional_hook, read_scalars, writers_of
from trainer.schedules.curve import read_lr_csv
from trainer.schedules.registry import metric_driven

NO_OUTPUT = "failed (no output)"  # a job directory with neither metrics.json nor event files
COLUMNS = ("job", "schedule", "overrides", "status", "final val/loss", "best val/loss", "final val/acc",
           "best val/acc", "updates", "wall time (s)")


@dataclass
class Job:
    """One job directory of a sweep, as read back from disk."""

    name: str
    schedule: str
    overrides: list[str]
    status: str
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    wall_time_s: float | None = None
    error: str | None = None
    #: (update, LR) of every update the job ran, from its schedule (lr.csv); empty for a plateau
    #: schedule (its cuts are known only from its logs) or a job without lr.csv
    lr_curve: list[tuple[int, float]] = field(default_factory=list)
    #: a branch's parent (``trainer.branch_from``; see :func:`trainer.rundir.branch.lineage`), else None
    lineage: dict[str, Any] | None = None

    def final(self, tag: str) -> float:
        points = self.scalars.get(tag)
        return points[-1][1] if points else math.nan

    def best(self, tag: str, *, lower: bool) -> float:
        values = [v for _, v in self.scalars.get(tag, [])]
        return (min if lower else max)(values) if values else math.nan

    @property
    def updates(self) -> int:
        steps = [s for s, _ in self.scalars.get("train/lr", [])]
        return steps[-1] + 1 if steps else 0


def read_job(job_dir: Path) -> Job:
    """Whatever a job left: a finished run, a running one, or only a failure note."""
    summary = read_summary(job_dir)
    scalars = read_scalars(job_dir, writers_of(job_dir))
    if summary is not None:
        status = summary["status"]
    else:
        status = "incomplete (running or killed)" if scalars is not None else NO_OUTPUT
    config_path = job_dir / "config.yaml"
    config = OmegaConf.load(config_path) if config_path.is_file() else None
    schedule = config.schedule.name if config is not None else "?"
    overrides = read_overrides(job_dir)
    if not overrides and "_" in job_dir.name:  # sweep dirs are named NUM_OVERRIDES
        overrides = job_dir.name.split("_", 1)[1].split(",")
    if schedule == "?":
        schedule = next((o.split("=", 1)[1] for o in overrides if o.startswith("schedule=")), "?")
    lineage = (summary or {}).get("lineage") or (OmegaConf.to_container(config.lineage)
                                                 if config is not None and config.get("lineage") else None)
    first = lineage["update"] if lineage else 0  # a branch's updates before N are its parent's
    lr_curve = []
    if (job_dir / "lr.csv").is_file() and not (config is not None and metric_driven(config.schedule)):
        rows = read_lr_csv(job_dir / "lr.csv")
        column = next(k for k in rows[0] if k.startswith("lr/"))  # the first group's, as train/lr
        ran = (summary or {}).get("metrics", {}).get("updates", len(rows))  # a range test may stop early
        lr_curve = [(int(r["update"]), r[column]) for r in rows[first : int(ran)]]
    return Job(
        name=job_dir.name,
        schedule=schedule,
        overrides=overrides,
        status=status,
        scalars=scalars or {},
        wall_time_s=None if summary is None else summary.get("wall_time_s"),
        error=None if summary is None else summary.get("error"),
        lr_curve=lr_curve,
        lineage=lineage,
    )


def branch_parents(jobs: list[Job]) -> list[Job]:
    """The runs the branches among ``jobs`` were branched from (``lineage["parent"]``), each once,
    read from their own directories; parents that are gone, or are among ``jobs``, are left out."""
    names = {job.name for job in jobs}
    dirs = dict.fromkeys(Path(job.lineage["parent"]) for job in jobs if job.lineage)
    return [read_job(d) for d in dirs if d.is_dir() and d.name not in names]


def branch_points(jobs: list[Job]) -> dict[str, list[int]]:
    """Parent run directory -> the updates its branches among ``jobs`` start at, sorted."""
    points: dict[str, set[int]] = {}
    for job in jobs:
        if job.lineage:
            points.setdefault(job.lineage["parent"], set()).add(job.lineage["update"])
    return {parent: sorted(updates) for parent, updates in points.items()}


def _draw_parents(ax: Any, parents: Sequence[Job], jobs: list[Job], curve: Any) -> None:
    """Each parent's ``curve(job)`` points in grey beneath its branches, and each branch point
    (update N) as a dotted vertical line."""
    for parent in parents:
        points = curve(parent)
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], "-", color="0.6", linewidth=2.5, zorder=0,
                    label=f"parent {parent.name}")
    for update in sorted({update for updates in branch_points(jobs).values() for update in updates}):
        ax.axvline(update, color="0.6", linestyle=":", linewidth=1, zorder=0)


def collect(sweep_dir: Path, *, skip: Mapping[str, int | None] | None = None) -> list[Job]:
    """Every job directory directly under ``sweep_dir``, sorted: completed jobs by final
    ``val/loss`` (lower first), then the rest. ``skip`` (see :func:`summary_versions`) leaves out
    the job directories that are still as it recorded them."""
    dirs = [d for d in sorted(sweep_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if skip is not None:
        now = summary_versions(sweep_dir)
        dirs = [d for d in dirs if d.name not in skip or skip[d.name] != now[d.name]]
    jobs = [read_job(d) for d in dirs]
    jobs = [j for j in jobs if j.scalars or j.status != NO_OUTPUT or j.overrides]

    def key(job: Job) -> tuple[int, float]:
        loss = job.final("val/loss")
        return (0 if job.status in FINISHED and not math.isnan(loss) else 1, loss if not math.isnan(loss) else 0)

    return sorted(jobs, key=key)


def summary_versions(sweep_dir: Path) -> dict[str, int | None]:
    """Job directory name -> modification time (ns) of its ``metrics.json`` (None without one)."""
    if not sweep_dir.is_dir():
        return {}
    return {
        d.name: (d / SUMMARY_FILE).stat().st_mtime_ns if (d / SUMMARY_FILE).is_file() else None
        for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
    }


def _common_overrides(jobs: list[Job]) -> set[str]:
    sets = [set(j.overrides) for j in jobs if j.overrides]
    return set.intersection(*sets) if len(sets) > 1 else set()


def rows(jobs: list[Job]) -> list[dict[str, str]]:
    """The report table, values formatted; overrides shared by every job are left out."""
    common = _common_overrides(jobs)

    def fmt(value: float | None, digits: int = 4) -> str:
        return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    table = []
    for job in jobs:
        table.append({
            "job": job.name.split("_", 1)[0],
            "schedule": job.schedule,
            "overrides": " ".join(o for o in job.overrides if o not in common) or "—",
            "status": job.status + (f": {job.error}" if job.error else ""),
            "final val/loss": fmt(job.final("val/loss")),
            "best val/loss": fmt(job.best("val/loss", lower=True)),
            "final val/acc": fmt(job.final("val/acc")),
            "best val/acc": fmt(job.best("val/acc", lower=False)),
            "updates": str(job.updates),
            "wall time (s)": fmt(job.wall_time_s, 1),
        })
    return table


def _plot(
    jobs: list[Job], path: Path, *, tags: tuple[str, ...], ylabel: str, log_y: bool = False, parents: Sequence[Job] = (),
) -> None:
    # Only here: Hydra imports this module for SweepReport on every run, sweep or not.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    _draw_parents(ax, parents, jobs, lambda parent: parent.scalars.get(tags[0]))
    for index, job in enumerate(jobs):
        for tag in tags:
            points = job.scalars.get(tag)
            if points:
                style = "-" if tag.startswith("train") else "o--"  # one colour per job; val dashed
                label = f"{job.name.split('_', 1)[0]} {job.schedule}" + (f" {tag}" if len(tags) > 1 else "")
                ax.plot([s for s, _ in points], [v for _, v in points], style, label=label, markersize=3,
                        color=f"C{index % 10}", alpha=0.6 if tag.startswith("train") else 1.0)
    ax.set_xlabel("optimizer update")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if ax.get_lines():
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    write_atomic(path, figure_bytes(fig, dpi=110))


def lr_figure(jobs: list[Job], parents: Sequence[Job] = ()) -> tuple[Any, str]:
    """Each job's LR of every update from its schedule (lr.csv), not the logged points: those are
    every ``log_every_n_steps`` updates and alias a periodic schedule. Jobs without a curve
    (plateau, or older runs) show ``train/lr`` as logged, marked so. A branch is drawn from its
    update N on, over its parent's curve (``parents``, grey). Returns the figure and its caption."""
    from matplotlib.figure import Figure  # only here, as in _plot

    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    _draw_parents(ax, parents, jobs, lambda parent: parent.lr_curve or parent.scalars.get("train/lr"))
    logged = False
    for index, job in enumerate(jobs):
        label = f"{job.name.split('_', 1)[0]} {job.schedule}"
        if job.lr_curve:
            ax.plot([u for u, _ in job.lr_curve], [lr for _, lr in job.lr_curve], label=label, color=f"C{index % 10}")
        elif job.scalars.get("train/lr"):
            logged = True
            points = job.scalars["train/lr"]
            ax.plot([s for s, _ in points], [v for _, v in points], ".-", markersize=3, color=f"C{index % 10}",
                    label=f"{label} (logged)")
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("learning rate")
    if ax.get_lines():
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    caption = "LR of every update, from each job's schedule (its lr.csv)"
    if logged:
        caption += "; jobs marked (logged): train/lr as logged, every logger.log_every_n_steps updates"
    if parents:
        caption += "; branches over their parent's curve (grey), dotted where they branch"
    return fig, caption


def write_report(sweep_dir: Path, out_dir: Path | None = None, jobs: list[Job] | None = None) -> Path:
    """Write report.md, report.csv, lr.png and loss.png for ``jobs`` (default: :func:`collect`);
    returns the report's path."""
    out_dir = out_dir or sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = collect(sweep_dir) if jobs is None else jobs
    table = rows(jobs)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    write_atomic(out_dir / "report.csv", text.getvalue())
    common = sorted(_common_overrides(jobs))
    parents = branch_parents(jobs)
    figure, lr_caption = lr_figure(jobs, parents)
    write_atomic(out_dir / "lr.png", figure_bytes(figure, dpi=110))
    lines = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(jobs)} jobs, sorted by final val/loss (lower is better); unfinished jobs last.",
        f"Shared overrides: `{' '.join(common)}`" if common else "",
        *(f"Branches of `{parent}` at update(s) {', '.join(map(str, updates))} are drawn over its curve (grey)."
          for parent, updates in branch_points(jobs).items()),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in table),
        "",
        f"![{lr_caption}](lr.png)",
        "",
        "![Loss](loss.png)",
        "",
    ]
    write_atomic(out_dir / "report.md", "\n".join(lines))
    _plot(jobs, out_dir / "loss.png", tags=("train/loss", "val/loss"), ylabel="loss (nats)", log_y=True,
          parents=parents)
    return out_dir / "report.md"


class SweepReport(Callback):
    """After a ``-m`` training sweep: write the report of its jobs into the sweep directory, name
    the jobs that did not complete, and exit non-zero if any failed, so scripts and CI notice.
    Every job has run by then: one job's failure never cuts the sweep short. Jobs left in the
    directory by an earlier sweep are not this sweep's (``python -m trainer.compare`` reports all)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # What is there before any job runs: compared with itself afterwards, not with a clock
        # (jobs on other machines, as SLURM runs them, stamp files with their own clocks).
        self.before = summary_versions(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # Directories with neither a summary nor logs are not training runs (previews write lr.csv).
        jobs = [j for j in collect(sweep_dir, skip=self.before) if j.status != NO_OUTPUT] if sweep_dir.is_dir() else []
        if not jobs:
            return  # not a training sweep, or no job got as far as its first logged update
        report = write_report(sweep_dir, jobs=jobs)
        for name in dict.fromkeys(name for job in jobs for name in writers_of(sweep_dir / job.name)):
            sweep_end = optional_hook(name, "sweep_end")
            if sweep_end is not None:
                sweep_end(sweep_dir)
        done = sum(job.status in FINISHED for job in jobs)
        print(f"sweep: {done} of {len(jobs)} jobs completed; report: {report}")
        for job in jobs:
            if job.status not in FINISHED:
                print(f"  job {job.name}: {job.status}" + (f": {job.error}" if job.error else ""), file=sys.stderr)
        code = sweep_exit_code({job.status for job in jobs})
        if code:
            sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m trainer.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (one sub-directory per job)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir
    if not sweep_dir.is_dir():
        refuse(f"SWEEP_DIR: {sweep_dir} is not a directory: give a sweep's directory (multirun/DATE/TIME)")
    if (sweep_dir / SUMMARY_FILE).is_file() or (sweep_dir / "config.yaml").is_file():
        # A report of one run would only repeat its metrics.json; its sweep (or the folder of
        # several runs) is what compares.
        refuse(f"SWEEP_DIR: {sweep_dir} is one run's directory, not a sweep's: give the directory that holds the "
               f"runs to compare, e.g. {sweep_dir.absolute().parent}")
    jobs = collect(sweep_dir)
    if not jobs:
        refuse(f"SWEEP_DIR: {sweep_dir} holds no runs (no sub-directory with metrics.json, logs or overrides): "
               "give a sweep's directory (multirun/DATE/TIME)")
    report = write_report(sweep_dir, args.out, jobs=jobs)
    print(report.read_text().split("\n![")[0])
    print(f"wrote {report} with report.csv, lr.png and loss.png beside it")


if __name__ == "__main__":
    main()
