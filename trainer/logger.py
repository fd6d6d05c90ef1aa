"""What is logged and when: TensorBoard scalars plus a tqdm bar.

Step axis: the 0-based index of the optimizer update the value belongs to (``train/*``), or the
number of updates done when it was measured (``val/*``). The device values of logged updates
(loss, gradient norm, skip count) stay on the device until they are read, all together, every
``logger.read_every_n_steps`` updates: logging every update costs no host-device sync per update,
so the host keeps queueing work ahead of the GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainer.distributed import World
from trainer.events import EventWriter
from trainer.hparams import HParamValue, experiment_summary, session_summaries


class _NoEvents:
    """The event writer of ranks other than 0, which write nothing."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def summary(self, summary: object, step: int = 0) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger:
    """Writes ``train/lr``, ``train/lr/<group>``, ``train/momentum``, ``train/loss``,
    ``train/grad_norm``, ``train/epoch``, ``train/skipped_updates``, running counters such as
    ``train/spike_skips``, and ``val/*`` scalars to event files in ``run_dir``."""

    def __init__(
        self,
        run_dir: Path,
        *,
        log_every_n_steps: int,
        read_every_n_steps: int,
        max_updates: int,
        updates_per_epoch: int,
        group_names: list[str],
        progress_bar: bool = True,
        start_update: int = 0,
        world: World | None = None,
    ) -> None:
        self.world = world or World()
        # On resume, purge_step makes TensorBoard drop what the interrupted run logged after its
        # checkpoint, so the updates it replays are not shown twice; a fresh run (update 0) hides
        # whatever an earlier run left in the same directory. Only rank 0 writes.
        self.writer = EventWriter(run_dir, purge_step=start_update) if self.world.is_main else _NoEvents()
        self.every = log_every_n_steps
        self.read_every = read_every_n_steps
        self.last_update = max_updates - 1
        # (update, lrs, momentum, epoch, counter tags, (loss, grad_norm, skipped_updates, *counters) on the device)
        self._pending: list[tuple[int, list[float], float | None, int, tuple[str, ...], tuple[torch.Tensor, ...]]] = []
        #: Every validation point this process logged (``val/*``, and ``val_raw/*`` beside an EMA),
        #: tag -> [(updates done, value)], as the event file holds it (a 32-bit float): a fresh
        #: run's summary reads it instead of the events.
        self.val_history: dict[str, list[tuple[int, float]]] = {}
        self.group_names = group_names
        self.updates_per_epoch = updates_per_epoch
        self.num_epochs = -(-max_updates // updates_per_epoch)
        self.bar = tqdm(
            total=max_updates, initial=start_update, unit="upd", dynamic_ncols=True,
            disable=not (progress_bar and self.world.is_main),
        )
        self._show_epoch()

    def _show_epoch(self) -> None:
        """``epoch E/N`` (1-based) before the bar, for the update it runs next."""
        epoch = min(self.bar.n // self.updates_per_epoch, self.num_epochs - 1)
        self.bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}", refresh=False)

    def due(self, update: int) -> bool:
        """True on updates whose values are logged: every ``log_every_n_steps`` and the last."""
        return update % self.every == 0 or update == self.last_update

    def read_due(self, update: int) -> bool:
        """True after the updates where pending values are read: every ``read_every_n_steps`` and the last."""
        return (update + 1) % self.read_every == 0 or update == self.last_update

    def record(
        self,
        update: int,
        *,
        lrs: list[float],
        momentum: float | None,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        epoch: int,
        skipped_updates: torch.Tensor,
        counters: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Keep one logged update's values (``lrs`` as applied, one per group) until :meth:`read`.
        ``loss`` and ``grad_norm`` are this update's own tensors; the running skip counter and
        ``counters`` (tag -> a running count, the same on every rank) are copied on the device
        (one small op each, no sync)."""
        counters = counters or {}
        tensors = (loss, grad_norm, skipped_updates.clone(), *(c.clone() for c in counters.values()))
        self._pending.append((update, lrs, momentum, epoch, tuple(counters), tensors))

    def read(self) -> float | None:
        """Read every pending update's device values (one host-device sync) and write their
        records; returns the last of their losses, or None when nothing was pending."""
        if not self._pending:
            return None
        # losses, grad norms, skip counts (and counters); the gradient's norm and the counts are the
        # same on every rank, the loss is each rank's own: train/loss is their mean (one collective per read).
        columns = [torch.stack(column).float() for column in zip(*(p[-1] for p in self._pending))]
        columns[0] = self.world.mean(columns[0])
        rows = torch.stack(columns, dim=1).tolist()  # one row per pending update
        for (update, lrs, momentum, epoch, tags, _), (loss, grad_norm, skipped, *counts) in zip(self._pending, rows):
            scalars = {
                "train/lr": lrs[0],
                "train/loss": loss,
                "train/epoch": epoch,
                "train/grad_norm": grad_norm,
                "train/skipped_updates": int(skipped),
                **{tag: int(count) for tag, count in zip(tags, counts)},
            }
            if len(lrs) > 1:
                scalars.update({f"train/lr/{name}": lr for name, lr in zip(self.group_names, lrs)})
            if momentum is not None:
                scalars["train/momentum"] = momentum
            self.writer.scalars(update, scalars)
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lrs[0]:.3g}", refresh=False)
        self._pending.clear()
        return loss

    def log_val(self, updates_done: int, metrics: dict[str, float]) -> None:
        self.writer.scalars(updates_done, metrics)
        stored = torch.tensor(list(metrics.values()), dtype=torch.float32).tolist()
        for tag, value in zip(metrics, stored):
            self.val_history.setdefault(tag, []).append((updates_done, value))
        self.writer.flush()  # once an epoch: what is on disk keeps up with the checkpoints
        self.write("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f"  (after {updates_done} updates)")
        # The bar's rate (and so its ETA) is of training updates only: without this, the time the
        # validation took counts as one slow update, and the ETA jumps after every validation.
        self.bar.unpause()

    def flush(self) -> None:
        """Put every record written so far on the disk (before a checkpoint is)."""
        self.writer.flush()

    def write(self, message: str) -> None:
        """A line on the console, beside the bar; rank 0's only."""
        if self.world.is_main:
            self.bar.write(message)

    def log_hparams(self, hparams: dict[str, HParamValue], *, experiment: bool) -> None:
        """Fill TensorBoard's HParams tab: this run's session (its hyper-parameters, beside its last
        ``val/*`` scalars in this same run) and, with ``experiment``, the table's columns too (a
        sweep writes those once for all its jobs: :mod:`trainer.hparams`)."""
        summaries = session_summaries(hparams)
        if experiment:
            summaries.insert(0, experiment_summary([hparams]))
        for summary in summaries:
            self.writer.summary(summary)

    def rewrite(self, step: int, scalars: dict[str, float]) -> None:
        """Write already-known values again at ``step`` (after a resume's purge), silently."""
        if scalars:
            self.writer.scalars(step, scalars)

    def advance(self) -> None:
        self.bar.update(1)
        if not self.bar.disable and self.bar.n % self.updates_per_epoch == 0:
            self._show_epoch()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
