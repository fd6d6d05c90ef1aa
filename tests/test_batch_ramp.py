"""trainer.batch_ramp: the global batch of every update, the examples it trains on, its schedule t
and LR, against the ramp's definition simulated update by update (:func:`reference`), seed 000's
warmup-cosine and the batch-size rule; the same updates at 1 and 2 ranks (the real torchrun);
stop + resume mid-ramp equal to the run never stopped; refusals in one line."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import QUIET, TINY, compose_config, run_cli
from tests.test_bad_input import assert_one_line_error
from tests.test_distributed import assert_same_parameters, model_of, torchrun
from tests.test_experiments import text_file
from tests.test_resume import straight_and_resumed
from tests.test_schedules import seed000_get_lr
from trainer.batch_ramp import build_ramp
from trainer.data.batches import epoch_order, example_epoch
from trainer.data.loading import TrainBatches
from trainer.plan import plan_run
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.schedules.curve import read_lr_csv


def reference(sizes, length, unit, epoch_examples, updates, tokens_per_example=1):
    """The ramp's definition, one update at a time: (size, examples trained before, epoch) of each.
    The size is stage ⌊count × (S - 1) / length⌋ (at most the last) of the count (updates,
    examples or tokens) reached before the update; an update that does not fit whole into what is
    left of its epoch starts the next one."""
    steps, samples, epoch, room, rows = len(sizes) - 1, 0, 0, epoch_examples, []
    for update in range(updates):
        count = {"update": update, "sample": samples, "token": samples * tokens_per_example}[unit]
        size = sizes[min(count * steps // length, steps)]
        if size > room:
            epoch, room = epoch + 1, epoch_examples
        rows.append((size, samples, epoch))
        samples, room = samples + size, room - size
    return rows


# (start, stages, length, unit, global batch, data.batch_size × ranks, examples per epoch, tokens per example)
CASES = {
    "auto steps in examples": (0.25, "auto", 1000, "sample", 64, 16, 256, 1),
    "7 sizes in updates": (0.25, 7, 10, "update", 64, 8, 200, 1),
    "3 sizes in tokens": (0.5, 3, 500, "token", 128, 32, 300, 8),
    "a stage skipped": (0.25, "auto", 20, "sample", 64, 16, 250, 1),  # 16 examples pass the 2nd share (14) too
    "an epoch of one update": (0.5, "auto", 300, "sample", 64, 32, 64, 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_update_follows_the_definition(case):
    start, stages, length, unit, full, micro, epoch_examples, tpe = CASES[case]
    node = {"start": start, "stages": stages, "length": length, "unit": unit}
    ramp, max_updates = build_ramp(node, {"max_steps": 300}, full=full, micro=micro, epoch_examples=epoch_examples,
                                   tokens_per_example=tpe, interval="sample", lr_power=0.5)
    first = int(start * full)
    sizes = list(range(first, full + 1, first)) if stages == "auto" else [
        first + i * (full - first) // (stages - 1) for i in range(stages)]
    rows = reference(sizes, length, unit, epoch_examples, max_updates, tpe)
    assert [(ramp.size(u), ramp.samples_before(u), ramp.epoch_of(u)) for u in range(max_updates)] == rows
    assert all(size % micro == 0 for size, _, _ in rows)
    assert [ramp.lr_factor(u) for u in range(max_updates)] == [(size / full) ** 0.5 for size, _, _ in rows]
    epochs = [epoch for _, _, epoch in rows]
    assert [ramp.epoch_start(e) for e in range(epochs[-1] + 1)] == [epochs.index(e) for e in range(epochs[-1] + 1)]
    trained = [samples for _, samples, _ in rows]
    for samples in range(0, trained[-1], 7):  # the first update before which `samples` were trained
        assert ramp.first_update_with(samples) == next(u for u, s in enumerate(trained) if s >= samples)
    if case == "a stage skipped":
        assert sorted({size for size, _, _ in rows}) == [16, 48, 64]


def ramp_cfg(*overrides):
    return compose_config("data.batch_size=8", "trainer.global_batch_size=32", "schedule=warmup_cosine",
                          "schedule.interval=sample", "trainer.batch_ramp.start=0.25",
                          "trainer.batch_ramp.length=400", *overrides)


ROWS = reference([8, 16, 24, 32], 400, "sample", 256, 100)  # the ramp of ramp_cfg, 256 examples per epoch


@pytest.mark.parametrize("budget, updates", [
    ("trainer.max_epochs=3", [epoch for _, _, epoch in ROWS].index(3)),
    ("trainer.max_samples=1000", next(u for u, (_, samples, _) in enumerate(ROWS) if samples >= 1000)),
    ("trainer.max_steps=35", 35),
])
def test_the_plan_is_the_same_at_any_world_size(budget, updates):
    """Sizes 8, 16, 24, 32 over 400 examples (shares end at 134, 267, 400): epoch 0 is updates
    0..23 (248 examples: a 16 does not fit in the 8 left), epoch 1 24..33, then 8 updates each."""
    plans = [plan_run(ramp_cfg(budget, f"data.batch_size={8 // w}"), 256, w) for w in (1, 2, 4)]
    assert plans[0] == plans[1] == plans[2]  # micro-batches of 8, 4 and 2 per rank: 4 of them in a full update
    plan = plans[0]
    assert plan.max_updates == updates and plan.total_steps == ROWS[updates][1]  # T: the examples of the run
    assert plan.num_epochs == ROWS[updates - 1][2] + 1 and [plan.epoch_start(e) for e in range(4)] == [0, 24, 34, 42]
    assert [plan.epoch_of(u) for u in range(100)] == [epoch for _, _, epoch in ROWS]
    assert plan.first_update_at(1000) == next(u for u, (_, samples, _) in enumerate(ROWS) if samples >= 1000)


class Indexed:
    """256 examples whose targets are their indices."""

    def train_epoch(self, batch_size, *, seed, epoch):
        return example_epoch(torch.zeros(256, 1), torch.arange(256), batch_size, seed=seed, epoch=epoch)


def trained_examples(plan, batch_size, world_size):
    """Per update, the sorted indices of the examples the ranks together train on, epoch by epoch."""
    per_rank = []
    for rank in range(world_size):
        batches = TrainBatches(Indexed(), batch_size, 3, torch.device("cpu"), plan.updates_per_epoch,
                               plan.accumulate_grad_batches, rank=rank, world_size=world_size, ramp=plan.ramp)
        updates = [group for e in range(plan.num_epochs) for group in batches.epoch(e, plan.epoch_start(e))]
        per_rank.append([torch.cat([y for _, y in group]) for group in updates[: plan.max_updates]])
    return [sorted(torch.cat(parts).tolist()) for parts in zip(*per_rank)]


def test_each_update_trains_on_the_same_examples_at_any_world_size_and_from_any_update():
    plans = {w: plan_run(ramp_cfg("trainer.max_epochs=3", f"data.batch_size={8 // w}"), 256, w) for w in (1, 2, 4)}
    examples = {w: trained_examples(plans[w], 8 // w, w) for w in plans}
    assert examples[1] == examples[2] == examples[4]
    ramp = plans[1].ramp
    for u, got in enumerate(examples[1]):  # the epoch's order, from the examples trained in it before u
        epoch = ramp.epoch_of(u)
        offset = ramp.samples_before(u) - ramp.samples_before(ramp.epoch_start(epoch))
        assert got == sorted(epoch_order(256, seed=3, epoch=epoch)[offset : offset + ramp.size(u)].tolist()), u
    # Resuming at update 28 (epoch 1, mid-ramp) at 2 ranks continues with the very same micro-batches.
    plan = plans[2]
    for rank in range(2):
        batches = TrainBatches(Indexed(), 4, 3, torch.device("cpu"), plan.updates_per_epoch,
                               plan.accumulate_grad_batches, rank=rank, world_size=2, ramp=plan.ramp)
        whole = [[y.tolist() for _, y in group] for group in batches.epoch(1, 24)]
        assert [[y.tolist() for _, y in group] for group in batches.epoch(1, 28)] == whole[4:]


# --- through the CLI --------------------------------------------------------------------------

# 256 examples, data.batch_size 8 on one process (4 on each of 2), global batch 32: sizes 8, 16, 24, 32.
RAMP = [*TINY, "trainer.global_batch_size=32", "schedule=warmup_cosine", "schedule.interval=sample",
        "schedule.warmup_steps=64", "schedule.min_lr=1e-4", "optimizer.lr=0.01", "optimizer.lr_scaling=sqrt",
        "trainer.batch_ramp.start=0.25", "trainer.batch_ramp.length=400", "trainer.max_epochs=3"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ramp") / "single"
    run_cli("trainer", [*RAMP, "data.batch_size=8", f"hydra.run.dir={run_dir}"])
    return run_dir


def test_batch_size_t_and_lr_of_every_update_follow_their_formulas(single):
    rows = reference([8, 16, 24, 32], 400, "sample", 256, 42)
    total = rows[-1][0] + rows[-1][1]  # T: every example of the 42 updates
    table = read_lr_csv(single / "lr.csv")
    assert [(r["batch_size"], r["t"]) for r in table] == [(size, samples) for size, samples, _ in rows]
    expected = [seed000_get_lr(samples, 64, total, 0.01, 1e-4) * (size / 256) ** 0.5 for size, samples, _ in rows]
    assert [r["lr/decay"] for r in table] == pytest.approx(expected, rel=1e-12, abs=0)
    logged = read_scalars(single)
    assert [v for _, v in logged["train/lr"]] == pytest.approx(expected, rel=1e-6)  # the event file holds float32
    assert [v for _, v in logged["train/batch_size"]] == [size for size, _, _ in rows]
    assert [v for _, v in logged["train/epoch"]] == [epoch for _, _, epoch in rows]
    assert [step for step, _ in logged["val/loss"]] == [24, 34, 42]  # the epochs' ends
    stages = load_checkpoint(single / "last.pt")["schedule"]["fingerprint"]["batch_ramp"]
    assert stages == [[0, 8, pytest.approx(0.5)], [17, 16, pytest.approx(0.5**0.5)], [26, 24, pytest.approx(0.75**0.5)],
                      [31, 32, 1.0]]  # the sqrt rule's factor at each size, relative to the full 32


def test_a_group_with_its_own_schedule_and_the_weight_decay_count_the_ramp_s_examples(tmp_path):
    """The biases follow a constant of their own (the run's warmup, half the LR), the weight decay
    the shape of each group's LR; t is the examples trained, and the batch-size rule scales every
    LR at each update's size but not the weight decay (λ follows the schedule's shape alone)."""
    run_dir = tmp_path / "run"
    run_cli("trainer.preview", [*RAMP, "data.batch_size=8", "optimizer.weight_decay=0.1", "optimizer.weight_decay_schedule=lr",
                                "optimizer.param_groups=[{match: '*.bias', lr_scale: 0.5, schedule: constant}]",
                                f"hydra.run.dir={run_dir}"])
    rows = reference([8, 16, 24, 32], 400, "sample", 256, 42)
    total = rows[-1][0] + rows[-1][1]
    table = read_lr_csv(run_dir / "lr.csv")
    cosine = [seed000_get_lr(samples, 64, total, 0.01, 1e-4) for _, samples, _ in rows]
    rule = [(size / 256) ** 0.5 for size, _, _ in rows]
    assert [r["lr/decay"] for r in table] == pytest.approx([c * f for c, f in zip(cosine, rule)], rel=1e-12, abs=0)
    constant = [0.5 * 0.01 * min(samples / 64, 1) * f for (_, samples, _), f in zip(rows, rule)]
    assert [r["lr/no_decay/*.bias"] for r in table] == pytest.approx(constant, rel=1e-12, abs=0)
    assert [r["wd/decay"] for r in table] == pytest.approx([0.1 * c / 0.01 for c in cosine], rel=1e-12, abs=0)  # λ × c / η


def test_stop_and_resume_mid_ramp_equals_the_run_never_stopped(tmp_path, monkeypatch):
    """Stopped during update 27: epoch 1, at 24 examples per update."""
    run = ["data.batch_size=8", *RAMP[len(TINY):]]
    straight, resumed = straight_and_resumed(tmp_path, monkeypatch, run, stop_after=28)
    assert straight["update"] == resumed["update"] == 42
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_two_ranks_train_like_one_and_resume_mid_ramp_in_one(tmp_path, single):
    """DDP over 2 gloo ranks with micro-batches of 4: the same examples at every update as one
    process with micro-batches of 8 (the same sums in another order: the tolerance of
    tests/test_distributed.py). Its checkpoint at update 28 resumes in one process."""
    ddp = tmp_path / "ddp"
    proc = torchrun(*RAMP, "data.batch_size=4", "trainer.checkpoint_every_n_steps=14", "trainer.keep_last_n=5",
                    f"hydra.run.dir={ddp}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = read_scalars(ddp), read_scalars(single)
    assert ours["train/lr"] == theirs["train/lr"] and ours["train/batch_size"] == theirs["train/batch_size"]
    for tag in ("train/loss", "val/loss"):
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in theirs[tag]], abs=1e-5), tag
    assert_same_parameters(model_of(ddp / "last.pt"), model_of(single / "last.pt"))
    resumed = tmp_path / "resumed"
    run_cli("trainer", [*RAMP, "data.batch_size=8", f"trainer.resume={ddp / 'step-00000028.pt'}",
                        f"hydra.run.dir={resumed}"])
    assert read_scalars(resumed)["train/lr"] == theirs["train/lr"][28:]
    assert_same_parameters(model_of(resumed / "last.pt"), model_of(single / "last.pt"))


def test_a_token_ramp_on_text_counts_tokens(tmp_path):
    """Windows of 8 tokens, micro-batches of 2, global batch 8: sizes 2, 4, 6, 8 examples over
    the first 480 tokens; t is the tokens trained before each update."""
    run_dir = tmp_path / "run"
    run_cli("trainer.preview", [
        *QUIET, "model=gpt", "data=shakespeare_char", f"data.path={text_file(tmp_path)}", "data.batch_size=2",
        "trainer.global_batch_size=8", "model.block_size=8", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
        "schedule=constant", "schedule.interval=token", "optimizer.lr_scaling=linear", "optimizer.lr=0.001",
        "trainer.batch_ramp.start=0.25", "trainer.batch_ramp.length=480", "trainer.batch_ramp.unit=token",
        "trainer.max_tokens=2000", f"hydra.run.dir={run_dir}"])
    table = read_lr_csv(run_dir / "lr.csv")
    rows = reference([2, 4, 6, 8], 480, "token", 10**9, len(table), tokens_per_example=8)
    assert [(r["batch_size"], r["t"]) for r in table] == [(size, samples * 8) for size, samples, _ in rows]
    assert table[-1]["t"] < 2000 <= table[-1]["t"] + table[-1]["batch_size"] * 8  # the updates first reaching 2000
    assert [r["lr/decay"] for r in table] == pytest.approx([0.001 * size / 256 for size, _, _ in rows], rel=1e-12)


def test_a_token_ramp_logs_the_tokens_its_updates_of_each_size_trained_on(tmp_path):
    """train/tokens after update u is the tokens of updates 0..u at their own sizes (not u + 1 full batches)."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [
        *QUIET, "model=gpt", "data=shakespeare_char", f"data.path={text_file(tmp_path)}", "data.batch_size=2",
        "trainer.global_batch_size=8", "model.block_size=8", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
        "schedule=constant", "schedule.interval=token", "trainer.batch_ramp.start=0.25", "trainer.batch_ramp.length=480",
        "trainer.batch_ramp.unit=token", "trainer.max_tokens=1000", f"hydra.run.dir={run_dir}"])
    logged = read_scalars(run_dir)["train/tokens"]
    rows = reference([2, 4, 6, 8], 480, "token", 10**9, len(logged) + 1, tokens_per_example=8)
    assert [tokens for _, tokens in logged] == [samples * 8 for _, samples, _ in rows[1:]]
    assert logged[-1][1] >= 1000 > logged[-2][1]  # the updates that first reach the budget


RAMPED = ["schedule.interval=sample", "trainer.batch_ramp.start=0.25", "trainer.batch_ramp.length=100"]


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (RAMPED, "trainer.batch_ramp.start", "not a whole number of micro-batches of data.batch_size × ranks = 32"),
    ([*RAMPED, "trainer.batch_ramp.start=0.3", "data.batch_size=8", "trainer.global_batch_size=32"],
     "trainer.batch_ramp.start", "is 9.6 examples"),
    ([*RAMPED, "trainer.batch_ramp.stages=3", "data.batch_size=8", "trainer.global_batch_size=32"],
     "trainer.batch_ramp.stages", "use stages=2 or 4"),
    ([*RAMPED, "trainer.batch_ramp.start=0.375", "data.batch_size=4", "trainer.global_batch_size=32"],
     "trainer.batch_ramp.stages", "give trainer.batch_ramp.stages (one of 2 or 6)"),
    (["trainer.batch_ramp.start=0.25", "trainer.batch_ramp.length=100"], "schedule.interval",
     "use schedule.interval=sample"),
    (["schedule.interval=sample", "trainer.batch_ramp.start=0.25"], "trainer.batch_ramp.length", "set how long"),
    ([*RAMPED, "trainer.batch_ramp.length=100000", "data.batch_size=8", "trainer.global_batch_size=32"],
     "trainer.batch_ramp.length", "at update 7640, but the run has 96 updates"),
    ([*RAMPED, "trainer.batch_ramp.unit=token", "data.batch_size=8", "trainer.global_batch_size=32"],
     "trainer.batch_ramp.unit", "tokens are counted"),
    (["trainer.batch_ramp.start=1"], "trainer.batch_ramp.start", "expected a finite number > 0 and < 1 or null"),
])
def test_a_ramp_that_cannot_run_is_one_line(tmp_path, overrides, key, text):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*TINY, *overrides, f"hydra.run.dir={run_dir}"], check=False)
    assert_one_line_error(proc, key)
    assert text in proc.stderr and not run_dir.exists()
