"""What is logged and when: the log writers (``logger.writers``) plus a tqdm bar.

Step axis: the 0-based index of the optimizer update the value belongs to (``train/*``), or the
number of updates done when it was measured (``val/*``). The device values of logged updates
(loss, gradient norm, the controls' counters) stay on the device until they are read, all
together, every ``logger.read_every_n_steps`` updates: logging every update costs no host-device
sync per update, so the host keeps queueing work ahead of the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trainer.batch_ramp import BatchRamp
from trainer.distributed import World
from trainer.plan import UNBOUNDED
from trainer.rundir.throughput import Throughput
from trainer.rundir.writers import Writer, open_writers


@dataclass(frozen=True)
class Pending:
    """One logged update, its device values not read yet."""

    update: int
    lrs: list[float]  # as applied, one per group
    momentum: float | None
    epoch: int
    tags: tuple[str, ...]  # the counters' tags, in the order of ``tensors[2:]``
    tensors: tuple[torch.Tensor, ...]  # loss, grad_norm, *counters
    wds: list[float] | None = None  # as applied, one per group, when optimizer.weight_decay_schedule moves them
    t: float | None = None  # a schedule measured as the run goes (seconds, padded tokens): the t its LR was set from
    tokens: int | None = None  # token data: the tokens trained by the end of this update


class RunLogger:
    """Writes ``train/lr``, ``train/lr/<group>`` (for each of ``group_names``: pass none when every
    group runs at ``train/lr``), ``train/wd`` and ``train/wd/<group>`` likewise (``wd_group_names``)
    when the weight decay is scheduled (the loop records it), ``train/momentum``, ``train/loss``,
    ``train/grad_norm``, ``train/epoch``, the controls' running counters (``train/skipped_updates``,
    ``train/spike_skips``, ...), ``train/batch_size`` (examples over all ranks) under a batch
    ``ramp``, and ``val/*`` scalars through the run's writers (rank 0's only);
    with ``times`` (a schedule measured as the run goes: the t of an update), ``train/t`` too. ``extra_writers``
    (rank 0's) get every scalar as the named writers do (a time run's ``lr.csv``).
    With a ``throughput`` (token data): ``train/tokens`` at every logged update, and
    ``perf/tokens_per_s`` (and ``perf/mfu``) at the last update of each read."""

    def __init__(
        self,
        run_dir: Path,
        *,
        log_every_n_steps: int,
        read_every_n_steps: int,
        max_updates: int,
        epoch_of: Callable[[int], int],
        group_names: list[str],
        wd_group_names: Sequence[str] = (),
        writers: Sequence[str] = ("tensorboard",),
        config: Mapping[str, Any] | None = None,
        progress_bar: bool = True,
        start_update: int = 0,
        resumed_val: Mapping[str, float] | None = None,
        world: World | None = None,
        times: Callable[[int], float] | None = None,
        extra_writers: Sequence[Writer] = (),
        throughput: Throughput | None = None,
        ramp: BatchRamp | None = None,
    ) -> None:
        self.world, self.times = world or World(), times
        self.throughput, self.ramp = throughput, ramp
        self.every = log_every_n_steps
        self.read_every = read_every_n_steps
        self.last_update = max_updates - 1
        self._pending: list[Pending] = []
        #: Every validation point this process logged (``val/*``, and ``val_raw/*`` beside an EMA),
        #: tag -> [(updates done, value)], as a 32-bit float (what the event file holds): a fresh
        #: run's summary reads it instead of reading its logs back.
        self.val_history: dict[str, list[tuple[int, float]]] = {}
        #: The last validation logged: (updates done, metrics); a checkpoint at that update keeps them.
        self.last_val: tuple[int, dict[str, float]] = (-1, {})
        self.group_names, self.wd_group_names = group_names, wd_group_names
        self._epoch_of = epoch_of  # the run plan's: the epoch an update trains in (a batch ramp's epochs vary)
        bounded = max_updates < UNBOUNDED  # else max_time (or padded max_tokens) alone ends the run: no count to show
        self.num_epochs = self._epoch_of(max_updates - 1) + 1 if bounded else None
        # Only rank 0 writes. A resumed run's writers drop what was logged after its checkpoint.
        self.writers: list[Writer] = [*open_writers(
            writers, run_dir, purge_step=start_update, config=config or {}
        ), *extra_writers] if self.world.is_main else []
        if resumed_val:  # logged at the checkpoint's own update: the purge dropped them, so again
            self._write(start_update, resumed_val)
            self.last_val = (start_update, dict(resumed_val))
        self.bar = tqdm(
            total=max_updates if bounded else None, initial=start_update, unit="upd", dynamic_ncols=True,
            disable=not (progress_bar and self.world.is_main),
        )
        self._show_epoch()

    def _write(self, step: int, values: Mapping[str, float]) -> None:
        for writer in self.writers:
            writer.scalars(step, values)

    def _show_epoch(self) -> None:
        """``epoch E/N`` (1-based; ``epoch E`` when only the time budget ends the run) before the bar,
        for the update it runs next."""
        if self.num_epochs is None:
            self.bar.set_description(f"epoch {self._epoch_of(self.bar.n) + 1}", refresh=False)
            return
        epoch = min(self._epoch_of(self.bar.n), self.num_epochs - 1)
        self.bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}", refresh=False)

    def due(self, update: int) -> bool:
        """True on updates whose values are logged: every ``log_every_n_steps`` and the last."""
        return update % self.every == 0 or update == self.last_update

    def read_due(self, update: int) -> bool:
        """True after the updates where pending values are read: every ``read_every_n_steps`` and the last."""
        return (update + 1) % self.read_every == 0 or update == self.last_update

    def record(
        self, update: int, *, lrs: list[float], momentum: float | None, loss: torch.Tensor, grad_norm: torch.Tensor,
        epoch: int, counters: Mapping[str, torch.Tensor] | None = None, wds: list[float] | None = None,
    ) -> None:
        """Keep one logged update's values until :meth:`read`. ``loss`` and ``grad_norm`` are this
        update's own tensors; ``counters`` (tag -> a running count, the same on every rank) are
        copied on the device (one small op each, no sync); ``wds``: the groups' weight decays, when scheduled."""
        counters = counters or {}
        tensors = (loss, grad_norm, *(count.clone() for count in counters.values()))
        t = self.times(update) if self.times is not None else None
        tokens = self.throughput.tokens(update) if self.throughput is not None else None
        self._pending.append(Pending(update, lrs, momentum, epoch, tuple(counters), tensors, wds, t, tokens))
        if self.throughput is not None:
            self.throughput.logged(update)

    def read(self, updates_done: int | None = None) -> list[dict[str, float]]:
        """Read every pending update's device values (one host-device sync) and write their
        records; returns them, oldest first (none when nothing was pending). ``updates_done``: the
        updates the device has done at this sync, for the throughput since the last read."""
        if not self._pending:
            return []
        # Losses, grad norms and counters; the gradient's norm and the counts are the same on every
        # rank, the loss is each rank's own: train/loss is their mean (one collective per read).
        columns = [torch.stack(column).float() for column in zip(*(p.tensors for p in self._pending))]
        columns[0] = self.world.mean(columns[0])
        rows = torch.stack(columns, dim=1).tolist()  # one row per pending update
        rates = self.throughput.measure(updates_done) if self.throughput and updates_done is not None else {}
        records = []
        for pending, (loss, grad_norm, *counts) in zip(self._pending, rows):
            scalars = {"train/lr": pending.lrs[0], "train/loss": loss, "train/epoch": pending.epoch,
                       "train/grad_norm": grad_norm, **{tag: int(count) for tag, count in zip(pending.tags, counts)}}
            if self.group_names:
                scalars.update({f"train/lr/{name}": lr for name, lr in zip(self.group_names, pending.lrs)})
            if pending.wds is not None:
                scalars["train/wd"] = pending.wds[0]
                scalars.update({f"train/wd/{name}": wd for name, wd in zip(self.wd_group_names, pending.wds)})
            if pending.momentum is not None:
                scalars["train/momentum"] = pending.momentum
            if pending.t is not None:
                scalars["train/t"] = pending.t
            if self.ramp is not None:
                scalars["train/batch_size"] = self.ramp.size(pending.update)
            if pending.tokens is not None:
                scalars["train/tokens"] = pending.tokens
            if pending is self._pending[-1]:
                scalars.update(rates)
            self._write(pending.update, scalars)
            records.append(scalars)
        if not self.bar.disable:
            last = records[-1]
            self.bar.set_postfix(loss=f"{last['train/loss']:.4f}", lr=f"{last['train/lr']:.3g}", refresh=False)
        self._pending.clear()
        return records

    def log_val(self, updates_done: int, metrics: dict[str, float]) -> None:
        self._write(updates_done, metrics)
        self.last_val = (updates_done, dict(metrics))
        stored = torch.tensor(list(metrics.values()), dtype=torch.float32).tolist()
        for tag, value in zip(metrics, stored):
            self.val_history.setdefault(tag, []).append((updates_done, value))
        self.flush()  # once an epoch: what is on disk keeps up with the checkpoints
        self.write("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f"  (after {updates_done} updates)")
        # The bar's rate (and so its ETA) is of training updates only: without this, the time the
        # validation took counts as one slow update, and the ETA jumps after every validation.
        self.bar.unpause()

    def val_at(self, update: int) -> dict[str, float]:
        """The ``val/*`` logged at ``update`` (the updates done), if the last validation was there."""
        return self.last_val[1] if self.last_val[0] == update else {}

    def flush(self) -> None:
        """Put every record written so far on the disk (before a checkpoint is, and after a
        validation: neither counts as training time)."""
        if self.throughput is not None:
            self.throughput.pause()
        for writer in self.writers:
            writer.flush()

    def write(self, message: str) -> None:
        """A line on the console, beside the bar; rank 0's only."""
        if self.world.is_main:
            self.bar.write(message)

    def log_hparams(self, hparams: Mapping[str, Any], *, experiment: bool) -> None:
        """The run's hyper-parameters, to every writer (TensorBoard's HParams tab: :mod:`trainer.rundir.hparams`)."""
        for writer in self.writers:
            writer.hparams(hparams, experiment=experiment)

    def advance(self) -> None:
        self.bar.update(1)
        if not self.bar.disable and self._epoch_of(self.bar.n) != self._epoch_of(self.bar.n - 1):  # a new epoch
            self._show_epoch()

    def close(self, status: str = "completed") -> None:
        """Close every writer, even when one fails (its error is raised once all are closed)."""
        self.bar.close()
        errors = []
        for writer in self.writers:
            try:
                writer.close(status)
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]
