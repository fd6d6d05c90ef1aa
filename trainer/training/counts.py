"""Counts that only the run knows as it goes: a schedule's t, or a budget, read once per update.

Most schedules count something that is a function of the update index (updates, epochs, the
examples or tokens of fixed-size batches). Two do not: seconds of training (the training clock,
:mod:`trainer.training.clock`) and the tokens of padded rows of several lengths (:class:`TokenCount`).
Each is a :class:`RunningCount`: after update u - 1 steps it is *stamped* for update u (the count
trained before u, the same on every rank), that stamp is update u's t, the budget is spent once a
stamp reaches it, and the checkpoint keeps the newest stamp so a resumed run goes on counting
from its update.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from trainer.controls import Stop
from trainer.data.named import Batch, tokens_in
from trainer.errors import require


class RunningCount:
    """Stamps (update -> t) of a count measured as the run goes, ``budget`` (None: none) in its
    units; ``counts_schedule``: the schedule's t is read from it, not only a budget. Subclasses
    say what they count (``key``, ``unit``, ``what``) and how it is stamped."""

    key = ""  # the budget's config key
    unit = ""  # as messages print it after a number
    what = "count"  # what a message calls it
    number = "g"  # how a message formats a count

    def __init__(self, *, budget: float | None = None, counts_schedule: bool = True) -> None:
        self.budget, self.counts_schedule = budget, counts_schedule
        self.stamps: dict[int, float] = {0: 0}  # update -> t; the newest two (the logger reads the older)

    def _keep(self, update: int, t: float) -> float:
        self.stamps = {u: s for u, s in self.stamps.items() if u == update - 1} | {update: t}
        return t

    def at(self, update: int) -> float:
        """The t that update ``update`` trains at (stamped already: the schedule's count)."""
        return self.stamps[update]

    def spent(self) -> Stop | None:
        """The end of the run once the newest stamp reaches the budget: no update runs past it."""
        update = max(self.stamps)
        if self.budget is None or self.stamps[update] < self.budget:
            return None
        return Stop(f"{self.key}: the budget of {self.budget}{self.unit} is spent after {update} updates "
                    f"(t = {self.stamps[update]:{self.number}}{self.unit})")

    def state_dict(self) -> dict[str, Any]:
        """The newest stamp: the checkpoint's update and the t it trains at."""
        update = max(self.stamps)
        return {"update": update, "t": self.stamps[update]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's stamp; None (its run did not count this): a budget alone counts from this
        process's first update, a schedule that counts it cannot continue it."""
        if state is None and self.counts_schedule:
            raise ValueError(f"it holds no {self.what} (its run did not keep one), which a schedule counted by it "
                             "needs to continue")
        if state is not None:
            self.stamps = {int(state["update"]): state["t"]}


class TokenCount(RunningCount):
    """Tokens trained on over every rank, counted from each update's batches: the t of
    ``schedule.interval=token`` and the count of ``trainer.max_tokens`` on padded rows of several
    lengths, where the tokens of an update are no function of its index. A token is a position the
    model reads: a named batch's ``attention_mask`` ones (every ``input_ids`` position when it has
    no mask, padding included), as packed blocks count every position. The ranks' counts are summed with the update's other
    counts (:meth:`trainer.training.step.TrainStep`: one all-reduce), and read on the host once
    per update (a device sync, made only when tokens are counted this way)."""

    key, unit, what, number = "trainer.max_tokens", " tokens", "token count", "d"

    def begin(self, update: int) -> None:
        """Before this process's first update: a count restored from its checkpoint goes on; a budget
        the checkpoint did not count (added on resume) counts from here."""
        if update not in self.stamps:
            self.stamps = {update: 0}

    def add(self, update: int, tokens: int) -> int:
        """Update ``update`` trained ``tokens`` (over every rank): stamp update + 1."""
        return int(self._keep(update + 1, self.stamps[update] + tokens))

    @staticmethod
    def tokens_of(micro_batches: list[Batch]) -> torch.Tensor:
        """This rank's tokens in an update's micro-batches (an integer device tensor, no sync)."""
        return torch.stack([tokens_in(batch) for batch in micro_batches]).sum()


def counts_padded_tokens(cfg: DictConfig, tokens_per_example: int | None, token_rows: bool) -> bool:
    """Whether the run counts tokens from its batches (:class:`TokenCount`): the schedule or the
    budget is in tokens, and the examples are named token sequences of several lengths
    (``token_rows``: :func:`~trainer.data.named.has_token_rows`; ``tokens_per_example`` None: no one length)."""
    wants = cfg.schedule.interval == "token" or cfg.trainer.get("max_tokens") is not None
    return wants and tokens_per_example is None and token_rows


def check_measured_schedule(cfg: DictConfig, *, budget: str, counts: str, other_units: str) -> None:
    """What a schedule whose t is measured as the run goes cannot do: go without a length (``budget``,
    a ``trainer`` key, or ``schedule.total_steps``), or place an unfreeze stage or a branch at an
    update, which no t of it names before the run. ``counts``: what t counts; ``other_units``: the
    units that can do both."""
    trainer, schedule = cfg.trainer, cfg.schedule
    require(trainer.get(budget) is not None or schedule.total_steps is not None, "schedule.interval",
            f"{schedule.interval} counts {counts} as the run goes, and nothing gives the run's length in them: set "
            f"trainer.{budget} (the budget; the schedule's total_steps follows it) or schedule.total_steps")
    require(not trainer.unfreeze, "trainer.unfreeze",
            f"a stage joins at an update fixed before the run, and its `at` would be {counts}, which no update index "
            f"gives: count the schedule in {other_units}, or leave the stages out")
    require(trainer.get("branch_from") is None, "trainer.branch_from",
            f"a branch of a schedule in {counts} is not supported (its LR at the branch point depends on its parent's "
            f"count): count the schedule in {other_units} to branch it")


def check_token_count(cfg: DictConfig) -> None:
    """What tokens counted as the run goes cannot do with the rest of the config: the update that
    reaches a token count is known only when the run gets there."""
    trainer, schedule = cfg.trainer, cfg.schedule
    if schedule.interval == "token":
        check_measured_schedule(cfg, budget="max_tokens", counts="tokens of padded rows", other_units="steps or samples")
    elif schedule.interval != "time":
        require(trainer.get("max_tokens") is None, "trainer.max_tokens",
                f"with schedule.interval={schedule.interval} the LR of every update is fixed before the run, and the "
                "update that reaches a token count of padded rows is not: count the schedule in tokens "
                "(schedule.interval=token), or give the budget as trainer.max_steps or trainer.max_samples")
