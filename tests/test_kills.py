"""kill -9 at any moment: of a run, and inside a checkpoint write. Resumed, the run ends as if it had
never been killed: bit-identical parameters, every logged step exactly once, no temp file left."""

from __future__ import annotations

import random

import torch

from tests.conftest import REPO, TINY, compose_config
from tests.forked_cli import ForkedCLI
from trainer.checkpoint import KILL_HOOK, load_checkpoint
from trainer.events import read_scalars
from trainer.run import train

EPOCHS = 80  # 640 updates: more than 22 kills can get through, so each of them kills a live run
RUN = [*TINY, "schedule=cosine", f"trainer.max_epochs={EPOCHS}", "trainer.checkpoint_every_n_steps=3",
       "trainer.keep_last_n=2"]
CHECKPOINT_BYTES = 50_000  # about: TINY's MLP with AdamW's moments, its RNG states and its config


def test_twenty_two_kills_then_a_resume_end_as_if_nothing_happened(tmp_path):
    rng = random.Random(14)
    run_dir = tmp_path / "killed"
    args = [*RUN, f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    kills = []
    with ForkedCLI(REPO) as cli:
        for _ in range(22):
            if rng.random() < 0.5:  # inside the n-th checkpoint write of the run, at a random byte
                nth, byte = rng.randint(1, 8), rng.randint(0, CHECKPOINT_BYTES * 6 // 5)
                code, output = cli.run(args, env={KILL_HOOK: f"{nth}:{byte}"})
                kills.append(("write", nth, byte))
            else:  # whenever the signal lands, once the run has printed its n-th validation line
                n = rng.randint(1, 3)
                code, output = cli.run(args, kill_after_validations=n)
                kills.append(("run", n))
            assert code == -9, output
        code, output = cli.run(args)
        assert code == 0, output
    straight = tmp_path / "straight"
    train(compose_config(*RUN), straight)

    assert len(kills) == 22 and {kind for kind, *_ in kills} == {"write", "run"}
    numbered = sorted(path.name for path in straight.glob("step-*.pt"))
    assert sorted(path.name for path in run_dir.glob("step-*.pt")) == numbered
    for name in ["last.pt", "best.pt", *numbered]:
        a, b = load_checkpoint(run_dir / name), load_checkpoint(straight / name)
        assert a["update"] == b["update"]
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
    resumed, reference = read_scalars(run_dir), read_scalars(straight)
    assert resumed.keys() == reference.keys()
    for tag in reference:  # each step once, in order, with the same value
        assert resumed[tag] == reference[tag], tag
    assert [step for step, _ in resumed["train/loss"]] == list(range(8 * EPOCHS))
    assert [step for step, _ in resumed["val/loss"]] == list(range(8, 8 * EPOCHS + 1, 8))
    assert not list(run_dir.glob(".*")), "temp or lock files left"
