"""The LR of every update, from the schedule itself: ``lr.csv`` and ``lr.png``.

What ``python -m trainer.preview`` writes, what every run writes into its directory (the exact
curve beside TensorBoard's smoothed, subsampled one), and what a sweep's report draws per job.
``lr.csv`` has one row per optimizer update (0-based): ``update``, ``t`` (the schedule index, in
``schedule.interval`` units), ``lr/<group>`` for every parameter group, ``wd/<group>`` (its weight
decay) for every group when ``optimizer.weight_decay_schedule`` moves it, ``momentum`` when the
schedule sets it, and ``batch_size`` (examples over all ranks) under ``trainer.batch_ramp``. A
schedule in seconds (``interval=time``), or in tokens of padded rows, is known only as the run
goes: its run writes a row per logged update as it logs it (:class:`LrLog`), the t read from the
training clock or the token count.
matplotlib is imported only by :func:`draw_lr`, where a plot is drawn.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from trainer.files import csv_rows, figure_bytes, restart_csv, write_atomic

if TYPE_CHECKING:  # the sweep report reads lr.csv files without torch
    import torch
    from omegaconf import DictConfig

    from trainer.plan import RunPlan
    from trainer.schedules.schedule import Schedule


#: Shown on every plot of a ``plateau`` schedule, whose cuts come from validation at run time.
PLATEAU_NOTE = "plateau: the LR cuts depend on validation and are not drawn"

Row = dict[str, float]


def lr_rows(optimizer: torch.optim.Optimizer, schedule: Schedule, num_updates: int, first: int = 0) -> list[Row]:
    """The LRs (weight decays, momentum) of updates ``first`` to ``num_updates - 1`` as training applies them,
    through the same :func:`~trainer.schedules.schedule.apply_schedule` (a pure function of the
    update), on a copy of the groups' settings: the optimizer itself is left as it was. A
    ``plateau`` schedule gives its LR before any cut."""
    from trainer.optim.groups import group_names
    from trainer.schedules.schedule import applied_lrs, applied_momentum, apply_schedule

    groups = SimpleNamespace(param_groups=[{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
    names = group_names(optimizer)
    scheduled_momentum = schedule.momentum_fn is not None
    rows = []
    for update in range(first, num_updates):
        apply_schedule(groups, schedule, update)
        row = {"update": update, "t": schedule.position(update)}
        row.update({f"lr/{name}": lr for name, lr in zip(names, applied_lrs(groups, steps_done=update))})
        if schedule.scheduled_decay:
            row.update({f"wd/{name}": group["weight_decay"] for name, group in zip(names, groups.param_groups)})
        if scheduled_momentum:
            row["momentum"] = applied_momentum(groups)
        if schedule.ramp is not None:
            row["batch_size"] = schedule.ramp.size(update)
        rows.append(row)
    return rows


def sampled_rows(optimizer: torch.optim.Optimizer, schedule: Schedule, points: int = 65) -> list[Row]:
    """A schedule measured as the run goes at ``points`` values of t spread evenly over [0, T] (``update``: the
    point's index), for what depends on the curve's shape alone (whether the groups' LRs differ)."""
    spacing = schedule.total_steps / (points - 1)
    return lr_rows(optimizer, schedule.counting(count=lambda point: point * spacing), points)


def phase_joins(rows: Sequence[Row], schedule: Schedule) -> list[tuple[int, str]]:
    """(first update, name) of each later phase of a chain: for a schedule measured as the run goes
    (seconds, padded tokens), the first of ``rows`` whose t reaches the phase's start (the updates
    are the run's, or an estimate's)."""
    if not schedule.measured:
        return schedule.phase_starts()
    joins = []
    for name, start in schedule.phases[1:]:
        reached = next((row for row in rows if row["t"] >= start), None)
        if reached is not None:
            joins.append((int(reached["update"]), name))
    return joins


def lr_title(cfg: DictConfig, plan: RunPlan) -> str:
    """``NAME (interval, T=total_steps, W=warmup_steps)``: the schedule as the run derived it (in seconds: ``T=60 s``)."""
    unit = " s" if cfg.schedule.interval == "time" else ""
    return f"{cfg.schedule.name} ({cfg.schedule.interval}, T={plan.total_steps}{unit}, W={plan.warmup_steps}{unit})"


def write_lr_csv(rows: list[Row], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(rows[0])
    writer.writerows(row.values() for row in rows)
    write_atomic(path, text.getvalue())


def read_lr_csv(path: Path) -> list[Row]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class LrLog:
    """``lr.csv`` of a run whose schedule is measured as it goes (seconds, padded tokens): one row per logged update, written as the
    run's logger writes its scalars (``train/t``, ``train/lr``, ``train/lr/<group>``, ``train/wd``,
    ``train/wd/<group>``, ``train/momentum``: as applied), a writer of :mod:`trainer.rundir.writers`' kind.

    ``group_names``: every parameter group's, in order (a group without a ``train/lr/<group>`` of
    its own runs at ``train/lr``; likewise its weight decay, with ``decays``: scheduled). A resumed run (``purge_step`` > 0) first drops the rows at or
    after the update it resumes from, and a row a kill cut short, as the other writers do.
    """

    def __init__(self, path: Path, group_names: Sequence[str], *, decays: bool, momentum: bool, purge_step: int) -> None:
        self.names, self.decays, self.momentum = list(group_names), decays, momentum
        header = ["update", "t", *(f"lr/{name}" for name in self.names),
                  *(f"wd/{name}" for name in (self.names if decays else ())), *(["momentum"] if momentum else [])]
        kept = [row for row in csv_rows(path, len(header)) if int(row[0]) < purge_step]
        self._file = restart_csv(path, header, kept)
        self._csv = csv.writer(self._file)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if "train/t" not in values:  # a validation's
            return
        lrs = [values.get(f"train/lr/{name}", values["train/lr"]) for name in self.names]
        wds = [values.get(f"train/wd/{name}", values["train/wd"]) for name in (self.names if self.decays else ())]
        extra = [values["train/momentum"]] if self.momentum else []
        self._csv.writerow([step, *(repr(float(v)) for v in (values["train/t"], *lrs, *wds, *extra))])

    def hparams(self, hparams: Mapping[str, object], *, experiment: bool) -> None:
        """Nothing: lr.csv holds LRs only."""

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, status: str) -> None:
        self._file.close()


def lr_columns(rows: list[Row], prefix: str = "lr/") -> list[list[str]]:
    """The ``lr/<group>`` columns (``prefix="wd/"``: the weight decays'), those with identical
    values together: one curve each."""
    curves: dict[tuple[float, ...], list[str]] = {}
    for column in (k for k in rows[0] if k.startswith(prefix)):
        curves.setdefault(tuple(r[column] for r in rows), []).append(column)
    return list(curves.values())


def draw_lr(
    rows: list[Row], path: Path, *, title: str, note: str | None = None, joins: Sequence[tuple[int, str]] = ()
) -> None:
    """Plot ``rows`` (from :func:`lr_rows`) to ``path``: one line per distinct group curve, labelled
    with every group it stands for (``lr/decay = lr/no_decay``), momentum on a second axis; a
    dotted vertical line at each of a chain's ``joins`` (first update, phase name), labelled; the
    weight decays, when scheduled (``wd/<group>`` columns), in a panel below, drawn the same way."""
    from matplotlib.figure import Figure  # the object API needs no GUI backend

    decays = lr_columns(rows, prefix="wd/")
    fig = Figure(figsize=(7, 6.6 if decays else 4.4), layout="constrained")
    updates = [r["update"] for r in rows]
    if decays:
        ax, below = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
        for columns in decays:
            below.plot(updates, [r[columns[0]] for r in rows], label=" = ".join(columns))
        below.set(xlabel="optimizer update", ylabel="weight decay")
        below.legend(fontsize="small", frameon=False)
    else:
        ax = fig.subplots()
        ax.set_xlabel("optimizer update")
    for columns in lr_columns(rows):
        ax.plot(updates, [r[columns[0]] for r in rows], label=" = ".join(columns))
    ax.set_ylabel("learning rate")
    ax.set_title(title if note is None else f"{title}\n{note}", fontsize="medium")
    for update, name in joins:
        ax.axvline(update, color="gray", linestyle=":", linewidth=1)
        ax.annotate(name, (update, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", va="top", fontsize="x-small", color="gray")
    handles = ax.get_lines()
    if "momentum" in rows[0]:
        ax2 = ax.twinx()
        handles += ax2.plot(updates, [r["momentum"] for r in rows], color="gray", linestyle="--", label="momentum")
        ax2.set_ylabel("momentum / beta1")
    # Below the axes, where it covers no curve.
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2), fontsize="small", frameon=False)
    write_atomic(path, figure_bytes(fig, dpi=110))
