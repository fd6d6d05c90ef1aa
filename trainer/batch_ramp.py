"""``trainer.batch_ramp``: a global batch that grows from a fraction of its size to all of it over
the run's first updates, examples or tokens, its LR scaled by ``optimizer.lr_scaling`` at every size.

The micro-batch stays ``data.batch_size``; what grows is the number of micro-batches each rank
accumulates, so every size is a whole number of micro-batches on every rank. The sizes are in
examples over all ranks and do not depend on the world size (a size the ranks do not divide is
refused), so update u trains on the same examples at any world size and a run resumes on any.

Everything here is a pure function of the update u (nothing is counted at run time):

- **Stages.** Sizes go from ``start`` × the global batch G to G in ``stages`` equal steps; the
  first ``stages - 1`` sizes share the ramp's ``length`` equally, and a stage lasts until the
  count reached *before* an update (updates, examples or tokens trained) passes its share. The
  run is a few :class:`Stage` s: (first update, size, examples trained before it), the last one
  at G for the rest of the run.
- **Epochs.** An epoch's updates are those that fit whole into its N examples, in order; an update
  that would run past the end starts the next epoch instead (the examples left over are dropped,
  as the last partial global batch is without a ramp). Epoch starts are walked until the first
  epoch at the full size, then follow every ⌊N / G⌋ updates.
- **The schedule's t** (``schedule.interval=sample|token``) is the examples (tokens) trained
  before u, so a small early batch advances it less.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trainer.errors import require
from trainer.params import Param

UNITS = ("update", "sample", "token")
#: ``trainer.batch_ramp.*`` (conf/trainer/default.yaml).
PARAMS = {
    "start": Param(None, "fraction of the global batch the first updates train on, e.g. 0.25; null = off", float,
                   low=0, high=1, low_open=True, high_open=True, extra=(None,)),
    "length": Param(None, "how long the batch grows, in `unit`s (required with start): the full batch from then on",
                    int, low=1, extra=(None,)),
    "unit": Param("sample", "what `length` counts: update, sample (training examples) or token (token data)", str,
                  choices=UNITS),
    "stages": Param("auto", "batch sizes from the start size to the full batch, in equal steps, each a whole number "
                    "of micro-batches on every rank; auto: steps of the start size", int, low=2, extra=("auto",)),
}


@dataclass(frozen=True)
class Stage:
    """Updates from ``first_update`` on train on ``size`` examples (over all ranks), until the next stage."""

    first_update: int
    size: int
    samples_before: int  # examples trained before first_update
    lr_factor: float  # (size / full size) ** p: optimizer.lr_scaling's rule relative to the full batch


@dataclass(frozen=True)
class BatchRamp:
    """The global batch, the examples trained and the epoch of every update (see the module doc).

    ``epoch_starts`` holds the first update of each epoch up to the first one at the full size
    (or later); ``units_per_example`` is what one example counts on the schedule's t (1 for
    ``sample``, its tokens for ``token``).
    """

    stages: tuple[Stage, ...]
    epoch_examples: int
    epoch_starts: tuple[int, ...]
    units_per_example: int = 1

    @property
    def full_size(self) -> int:
        return self.stages[-1].size

    @property
    def end(self) -> int:
        """The first update at the full size."""
        return self.stages[-1].first_update

    def stage(self, update: int) -> Stage:
        return self.stages[bisect.bisect_right([s.first_update for s in self.stages], update) - 1]

    def size(self, update: int) -> int:
        """Examples update ``update`` trains on, over all ranks."""
        return self.stage(update).size

    def samples_before(self, update: int) -> int:
        """Examples trained before update ``update``."""
        stage = self.stage(update)
        return stage.samples_before + (update - stage.first_update) * stage.size

    def position(self, update: int) -> int:
        """The schedule's t at ``update``: examples (tokens) trained before it."""
        return self.samples_before(update) * self.units_per_example

    def lr_factor(self, update: int) -> float:
        """``optimizer.lr_scaling``'s factor at this update's size over the full batch's (1 from :attr:`end`)."""
        return self.stage(update).lr_factor

    def first_update_with(self, samples: int) -> int:
        """The first update before which at least ``samples`` examples were trained."""
        for stage, after in zip(self.stages, (*self.stages[1:], None)):
            update = stage.first_update + max(0, _ceil_div(samples - stage.samples_before, stage.size))
            if after is None or update <= after.first_update:
                return update
        raise AssertionError("the last stage is open-ended")

    def first_update_at(self, t: int) -> int:
        """The first update whose schedule t (examples or tokens) is at least ``t``."""
        return self.first_update_with(_ceil_div(t, self.units_per_example))

    def epoch_start(self, epoch: int) -> int:
        """The first update of ``epoch``."""
        if epoch < len(self.epoch_starts):
            return self.epoch_starts[epoch]
        return self.epoch_starts[-1] + (epoch - len(self.epoch_starts) + 1) * (self.epoch_examples // self.full_size)

    def epoch_of(self, update: int) -> int:
        """The epoch update ``update`` trains in."""
        last = self.epoch_starts[-1]
        if update >= last:
            return len(self.epoch_starts) - 1 + (update - last) // (self.epoch_examples // self.full_size)
        return bisect.bisect_right(self.epoch_starts, update) - 1

    def fingerprint(self) -> list[list[int | float]]:
        """(first update, size, LR factor) of every stage: what a resume must find unchanged (the
        factor too: optimizer.lr_scaling's rule moves it even where the full batch's scale is 1)."""
        return [[stage.first_update, stage.size, stage.lr_factor] for stage in self.stages]

    def describe(self) -> str:
        """``batch ramp: 16 examples per update from update 0, 32 from 22, ..., the full 64 from 40``."""
        steps = ", ".join(f"{s.size} from {s.first_update}" for s in self.stages[1:-1])
        first = self.stages[0]
        return (f"batch ramp: {first.size} examples per update from update 0{', ' + steps if steps else ''}, "
                f"the full {self.full_size} from {self.end} ({self.samples_before(self.end)} examples)")


def ramp_on(node: Mapping[str, Any] | None) -> bool:
    return node is not None and node.get("start") is not None


def check_batch_ramp(node: Mapping[str, Any], interval: str, *, streaming: bool = False) -> None:
    """What the config alone can tell: a ramp has a length, the schedule counts examples or tokens
    (counted in updates or epochs, the small early batches would shift it), and the data can be
    indexed (a stream cannot: the ramp places each update's micro-batches by their index)."""
    if not ramp_on(node):
        return
    require(not streaming, "trainer.batch_ramp", "a streamed split (data.streaming=true) has no index to place each "
                                                 "update's micro-batches by: set data.streaming=false, or drop the ramp")
    require(node.get("length") is not None, "trainer.batch_ramp.length",
            f"set how long the batch grows, in trainer.batch_ramp.unit={node.get('unit')}s (e.g. 10000)")
    require(interval in ("sample", "token"), "schedule.interval",
            f"{interval} does not count the examples a batch ramp's smaller early updates train, so the schedule "
            "would run ahead of them: use schedule.interval=sample (or token for token data)")


def stage_sizes(node: Mapping[str, Any], *, full: int, micro: int) -> list[int]:
    """The ramp's sizes from start to ``full`` examples, each a multiple of ``micro`` (data.batch_size
    × ranks): refused in one line, with a fix, otherwise."""
    exact = node["start"] * full
    start = round(exact)
    require(abs(exact - start) <= 1e-9 * full and start >= micro and start % micro == 0, "trainer.batch_ramp.start",
            f"{node['start']} of the global batch {full} is {exact:g} examples, not a whole number of micro-batches "
            f"of data.batch_size × ranks = {micro}: each rank accumulates whole micro-batches; start at a multiple "
            f"of {micro / full:g} (e.g. {max(micro, round(exact / micro) * micro) / full:g}), or lower data.batch_size")
    if node["stages"] == "auto":
        require((full - start) % start == 0, "trainer.batch_ramp.stages",
                f"auto grows the batch in steps of its start size {start}, which do not end at the global batch {full}: "
                f"give trainer.batch_ramp.stages (one of {_valid_stages(full, start, micro)})")
        return list(range(start, full + 1, start))
    steps = node["stages"] - 1
    require((full - start) % (micro * steps) == 0, "trainer.batch_ramp.stages",
            f"{node['stages']} sizes from {start} to {full} examples in equal steps are not all whole numbers of "
            f"micro-batches of data.batch_size × ranks = {micro}: use stages={_valid_stages(full, start, micro)}")
    return [start + i * (full - start) // steps for i in range(steps + 1)]


def _valid_stages(full: int, start: int, micro: int) -> str:
    whole = (full - start) // micro
    return " or ".join(str(d + 1) for d in range(1, whole + 1) if whole % d == 0)


def ramp_stages(sizes: list[int], *, length: int, unit: str, tokens_per_example: int, lr_power: float) -> list[Stage]:
    """Each size's first update and the examples trained before it; a stage no update falls in is
    left out. Size i < S - 1 (S sizes) lasts while the count before an update (updates, examples
    or tokens) is below ⌈(i + 1) × length / (S - 1)⌉."""
    steps, full = len(sizes) - 1, sizes[-1]
    stages, update, samples = [], 0, 0
    for i, size in enumerate(sizes):
        if i == steps:  # the full batch, for the rest of the run
            stages.append(Stage(update, size, samples, 1.0))
            break
        share = _ceil_div((i + 1) * length, steps)
        if unit == "update":
            count = max(0, share - update)
        else:  # the updates that first reach the share's examples (a token share: the examples holding its tokens)
            count = max(0, _ceil_div(_ceil_div(share, tokens_per_example if unit == "token" else 1) - samples, size))
        if count:
            stages.append(Stage(update, size, samples, (size / full) ** lr_power))
        update, samples = update + count, samples + count * size
    return stages


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def epoch_starts(stages: tuple[Stage, ...], epoch_examples: int, *, max_epochs: int | None = None) -> tuple[int, ...]:
    """The first update of every epoch until the first one at the full size or later, and at most
    ``max_epochs`` epochs on: updates fill an epoch while they fit whole into its examples."""
    firsts = [s.first_update for s in stages]
    starts = [0]
    while starts[-1] < firsts[-1] and (max_epochs is None or len(starts) <= max_epochs):
        update, room = starts[-1], epoch_examples
        while True:  # through the stages the epoch spans; the first update always fits (size <= G <= N)
            index = bisect.bisect_right(firsts, update) - 1
            fit = room // stages[index].size
            if index + 1 < len(stages):
                fit = min(fit, firsts[index + 1] - update)
            update, room = update + fit, room - fit * stages[index].size
            if index + 1 == len(stages) or update < firsts[index + 1]:  # the next update does not fit
                break
        starts.append(update)
    return tuple(starts)


def build_ramp(
    node: Mapping[str, Any], trainer: Mapping[str, Any], *, full: int, micro: int, epoch_examples: int,
    tokens_per_example: int | None, interval: str, lr_power: float,
) -> tuple[BatchRamp, int]:
    """The ramp ``node`` (``trainer.batch_ramp``) gives a global batch of ``full`` examples made of
    micro-batches of ``micro`` over the ranks, and the run's updates under it from ``trainer``'s
    budget; refused in one line when a size is not whole micro-batches, when tokens are counted
    on data without them, or when the run ends before the full batch is reached."""
    counts_tokens = node["unit"] == "token" or interval == "token" or trainer.get("max_tokens") is not None
    require(tokens_per_example is not None or not counts_tokens, "trainer.batch_ramp.unit",
            "tokens are counted, and a ramp needs them per example (token sequences of one length), which this data "
            "does not have: give the ramp, schedule and budget in samples")
    sizes = stage_sizes(node, full=full, micro=micro)
    stages = tuple(ramp_stages(sizes, length=node["length"], unit=node["unit"], tokens_per_example=tokens_per_example or 1,
                               lr_power=lr_power))
    ramp = BatchRamp(stages, epoch_examples, (0,), tokens_per_example if interval == "token" else 1)
    if trainer.get("max_steps") is not None:
        max_updates = trainer["max_steps"]
    elif trainer.get("max_samples") is not None:
        max_updates = ramp.first_update_with(trainer["max_samples"])
    elif trainer.get("max_tokens") is not None:
        max_updates = ramp.first_update_with(_ceil_div(trainer["max_tokens"], tokens_per_example))
    else:
        # Walked at most max_epochs epochs on: either that far, or to the full size (then every ⌊N / G⌋ updates).
        walked = replace(ramp, epoch_starts=epoch_starts(stages, epoch_examples, max_epochs=trainer["max_epochs"]))
        max_updates = walked.epoch_start(trainer["max_epochs"])
    require(ramp.end < max_updates, "trainer.batch_ramp.length",
            f"the batch reaches its full {full} examples at update {ramp.end}, but the run has {max_updates} updates: "
            "shorten the ramp or train longer")
    return replace(ramp, epoch_starts=epoch_starts(stages, epoch_examples)), max_updates
