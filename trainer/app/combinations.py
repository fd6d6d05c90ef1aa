"""Combinations of keys that only the built run can judge: each key alone is valid, together they
cannot work. Checked before anything is written, so each is one line and exit code 2, where the
run itself would fail after its first validation or train without effect to the end.

- A watched metric the validation never gives: ``val/acc`` of a regression, or any metric when the
  data has no validation split (``trainer.early_stopping``, a ``plateau`` schedule or phase).
- Unfreeze stages against the run's length: a stage after the last update, or every parameter
  frozen at update 0.
- ``trainer.grad_spike.window`` longer than the run: no update could ever be judged.
"""

from __future__ import annotations

from collections.abc import Sequence, Set

import torch
from omegaconf import DictConfig

from trainer.errors import ConfigError
from trainer.optim.unfreeze import Stage
from trainer.plan import RunPlan
from trainer.schedules.schedule import Schedule


def watchers(cfg: DictConfig, schedule: Schedule) -> list[tuple[str, str]]:
    """(key, metric) of everything that reads a validation metric to act on it."""
    watching = []
    if cfg.trainer.early_stopping.patience is not None:
        watching.append(("trainer.early_stopping.monitor", cfg.trainer.early_stopping.monitor))
    if schedule.monitor is not None:
        phases = cfg.schedule.get("phases")
        key = f"schedule.phases.{len(phases) - 1}.monitor" if cfg.schedule.name == "chain" else "schedule.monitor"
        watching.append((key, schedule.monitor))
    return watching


def check_watched_metrics(cfg: DictConfig, schedule: Schedule, metrics: Set[str]) -> None:
    """Each watched metric is one the validation gives: ``metrics`` (empty: no validation split)."""
    for key, metric in watchers(cfg, schedule):
        if not metrics:
            raise ConfigError(key, f"watches {metric}, but the data has no validation split: give the data one "
                                   "(e.g. data.val) or switch off what watches it")
        if metric not in metrics:
            raise ConfigError(key, f"validation gives {', '.join(sorted(metrics))}, not {metric} (the model's "
                                   f"outputs are not class scores of its targets): watch {min(metrics)}")


def planned_updates(plan: RunPlan) -> int:
    """The updates this run and its planned continuations make: a run may stop before its
    schedule's end (``trainer.max_steps`` below ``schedule.total_steps``) and resume later. A
    schedule measured as the run goes (seconds, padded tokens) reaches its end at an update no plan
    knows: the run's own cap."""
    if plan.measured:
        return plan.max_updates
    return max(plan.max_updates, plan.first_update_at(plan.total_steps))


def check_stages_fit(stages: Sequence[Stage], optimizer: torch.optim.Optimizer, plan: RunPlan) -> None:
    """Every stage joins within the run (or its schedule), and some group of ``optimizer`` trains
    from update 0."""
    updates = planned_updates(plan)
    for stage in stages:
        if stage.at_update >= updates:
            raise ConfigError(f"trainer.unfreeze.{stage.index}.at",
                              f"joins at update {stage.at_update}, but the run's last update is {updates - 1}: "
                              f"{list(stage.modules)} would never train; start it earlier or drop the stage")
    joins = [group.get("unfreeze_at", 0) for group in optimizer.param_groups]
    if joins and min(joins) > 0:
        raise ConfigError("trainer.unfreeze", f"every trainable parameter is frozen at update 0 (the first stage "
                                              f"joins at update {min(joins)}): nothing would train until then; "
                                              "leave a module (e.g. the head) out of the stages")


def check_spike_window(cfg: DictConfig, plan: RunPlan) -> None:
    """The spike guard's running median fills within the run (or its schedule)."""
    node, updates = cfg.trainer.grad_spike, planned_updates(plan)
    if node.factor is not None and node.window >= updates:
        raise ConfigError("trainer.grad_spike.window",
                          f"{node.window} updates fill the window only after the run's {updates} updates: "
                          f"no update could be judged a spike; set a window below {updates}")
