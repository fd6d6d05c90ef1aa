"""kill -9 at any moment: of a run, and inside a checkpoint write. Resumed, the run ends as if it had
never been killed: bit-identical parameters, every logged step exactly once, no temp file left."""

from __future__ import annotations

import csv
import random

import torch

from tests.conftest import REPO, TINY, compose_config, run_cli
from tests.forked_cli import ForkedCLI
from trainer.app.run import train
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.rundir.kill_hook import KILL_HOOK

EPOCHS = 56  # 448 updates: more than 22 kills get through (18 updates each at most), so each kills a live run
RUN = [*TINY, "schedule=cosine", f"trainer.max_epochs={EPOCHS}", "trainer.checkpoint_every_n_steps=3",
       "trainer.keep_last_n=2", "logger.writers=[tensorboard,csv]"]
CHECKPOINT_BYTES = 51_000  # about TINY's MLP with AdamW's moments, the RNG states and the config


def rows(run_dir):
    """metrics.csv's (step, tag, value) rows, in the order written (wall times aside)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row[:3] for row in csv.reader(f)]


def test_twenty_two_kills_then_a_resume_end_as_if_nothing_happened(tmp_path):
    rng = random.Random(14)
    run_dir = tmp_path / "killed"
    args = [*RUN, f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    # 8 kills at a random byte of a checkpoint's temp file, 3 after it and the other names (step
    # copy, best.pt) were published but before last.pt was replaced, 11 wherever the signal lands
    # once the run has printed its n-th validation line.
    kills = ["write"] * 8 + ["publish"] * 3 + ["run"] * 11
    rng.shuffle(kills)
    leftovers = 0
    with ForkedCLI(REPO) as cli:
        for kind in kills:
            if kind == "run":
                code, output = cli.run(args, kill_after_validations=rng.randint(1, 2))
            else:  # in the n-th checkpoint write of the run
                byte = rng.randint(0, CHECKPOINT_BYTES) if kind == "write" else 10**9
                code, output = cli.run(args, env={KILL_HOOK: f"{rng.randint(1, 6)}:{byte}"})
            assert code == -9, output
            # what this kill left, the next start removes: never more than one write's temp files
            left = [path.name for path in run_dir.glob(".*.tmp")]
            assert len(left) <= 2, left
            leftovers += len(left)
        code, output = cli.run(args)
        assert code == 0, output
    straight = tmp_path / "straight"
    train(compose_config(*RUN), straight)

    numbered = sorted(path.name for path in straight.glob("step-*.pt"))
    assert sorted(path.name for path in run_dir.glob("step-*.pt")) == numbered
    for name in ["last.pt", "best.pt", *numbered]:
        a, b = load_checkpoint(run_dir / name), load_checkpoint(straight / name)
        assert a["update"] == b["update"]
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
        for index, moments in b["optimizer"]["state"].items():
            assert all(torch.equal(a["optimizer"]["state"][index][k], v) for k, v in moments.items()), (name, index)
    resumed, reference = read_scalars(run_dir), read_scalars(straight)
    assert resumed.keys() == reference.keys()
    for tag in reference:  # each step once, in order, with the same value
        assert resumed[tag] == reference[tag], tag
    assert rows(run_dir) == rows(straight) and len(rows(straight)) > 8 * EPOCHS * 5  # metrics.csv: the same, row for row
    assert [step for step, _ in resumed["train/loss"]] == list(range(8 * EPOCHS))
    assert [step for step, _ in resumed["val/loss"]] == list(range(8, 8 * EPOCHS + 1, 8))
    assert leftovers > 0 and not list(run_dir.glob(".*")), "temp or lock files left"


def test_a_kill_between_best_and_last_leaves_best_pt_in_place_and_the_resume_writes_it_again(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "schedule=cosine", "trainer.max_epochs=3", f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    # The second write (update 16, an improvement) dies once best.pt is in place, before last.pt is.
    killed = run_cli("trainer", args, env={KILL_HOOK: f"2:{10**9}"}, check=False)
    assert killed.returncode == -9
    assert load_checkpoint(run_dir / "best.pt")["update"] == 16 and load_checkpoint(run_dir / "last.pt")["update"] == 8
    run_cli("trainer", args)
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    assert last["update"] == 24 and best["update"] in (16, 24) and best["checkpoints"]["best"] == last["checkpoints"]["best"]
