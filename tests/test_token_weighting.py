"""Loss weighted by tokens, exact at any accumulation and world size (issue 24).

Padded sentences of 2..24 tokens, a tiny GPT-2 and SGD: one process accumulating 4 micro-batches
of 4, one process with batches of 16, and 2 ranks (torchrun, gloo) accumulating 2 each train on
the same 16 sentences at every update. The update's gradient is the mean over every counted token
of those 16, so the three end with the same parameters and log the same ``train/loss``. A loss
that is the mean of each micro-batch (a user's ``loss._target_``: the trainer weighs micro-batches
alike) gives each micro-batch's tokens the weight of its token count's inverse, and the same
comparison fails by orders of magnitude: the test below shows it.

The bound, 1e-6 relative (fp32: unit roundoff u = 2^-24 = 6e-8): the runs do the same arithmetic
in different orders (micro-batches, ranks, padded widths that change the matmul shapes), so they
differ by rounding alone. A sum of n fp32 terms reordered moves by about sqrt(n)·u relative (by
(n-1)·u at worst, when every rounding error falls the same way): about 1e-6 for the ~200 token
losses of an update and the few hundred products of a gradient entry. The parameters are
compared as one vector (‖θa − θb‖ / ‖θa‖, and the largest difference over the largest |θ|), so a
tensor near zero (a bias of norm 0.01) does not turn a difference of one ulp into a large ratio.

The same runs count their schedule in tokens (``schedule.interval=token``) with a budget of two
epochs' tokens: every sentence's tokens, counted over the micro-batches and the ranks, exactly
(integers), so t is the same at every update of the three.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import QUIET, REPO
from tests.test_distributed import LAUNCH_TIMEOUT, env, free_port
from tests.userpkg.text import Sentences
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars

USER_CONF = REPO / "tests" / "userpkg" / "conf"
BOUND = 1e-6
#: The tokens of an epoch: all 64 sentences (data=sentences' training split), each trained once.
EPOCH_TOKENS = sum(len(Sentences(64)[k]["input_ids"]) for k in range(64))
#: 64 sentences / global batch 16 = 4 updates per epoch; two epochs' tokens are first reached by update 8.
RUN = [*QUIET, "model=tiny_gpt2", "data=sentences", "optimizer=sgd", "optimizer.lr=0.5", "schedule=constant",
       "schedule.interval=token", f"trainer.max_tokens={2 * EPOCH_TOKENS}", "trainer.global_batch_size=16"]


def user_env() -> dict[str, str]:
    return {**env(), "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def train(run_dir, *overrides: str, ranks: int = 1):
    """The real CLI on ``ranks`` processes (torchrun for 2), the user's configs beside ours."""
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}"]
    proc = subprocess.run([*launcher, "-m", "trainer", "--config-dir", str(USER_CONF), *RUN, *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=REPO, env=user_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def parameters(run_dir) -> torch.Tensor:
    state = load_checkpoint(run_dir / "last.pt")["model"]
    return torch.cat([state[name].flatten() for name in sorted(state) if state[name].is_floating_point()])


def losses(run_dir) -> list[float]:
    return [value for _, value in read_scalars(run_dir)["train/loss"]]


def difference(a, b) -> float:
    """The larger of ‖Δθ‖ / ‖θ‖ and max |Δθ| / max |θ| between two runs' parameters."""
    x, y = parameters(a), parameters(b)
    return max(((x - y).norm() / x.norm()).item(), ((x - y).abs().max() / x.abs().max()).item())


def loss_difference(a, b) -> float:
    return max(abs(x - y) / abs(x) for x, y in zip(losses(a), losses(b), strict=True))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    return {
        "accumulate 4": train(root / "a", "data.batch_size=4"),
        "batch 16": train(root / "b", "data.batch_size=16"),
        "2 ranks accumulate 2": train(root / "c", "data.batch_size=4", ranks=2),
    }


def test_accumulation_and_ranks_give_the_parameters_and_losses_of_one_large_batch(runs):
    reference = runs["batch 16"]
    assert len(losses(reference)) == 8 and losses(reference)[-1] < losses(reference)[0] - 1  # it learns
    for name in ("accumulate 4", "2 ranks accumulate 2"):
        assert difference(reference, runs[name]) <= BOUND, name
        assert loss_difference(reference, runs[name]) <= BOUND, name
        val = [v for _, v in read_scalars(runs[name])["val/loss"]]
        assert val == pytest.approx([v for _, v in read_scalars(reference)["val/loss"]], rel=BOUND)


def test_the_tokens_of_padded_rows_are_counted_over_micro_batches_and_ranks_alike(runs):
    counts = {name: [v for _, v in read_scalars(run_dir)["train/t"]] for name, run_dir in runs.items()}
    t = counts["batch 16"]
    assert counts["accumulate 4"] == counts["2 ranks accumulate 2"] == t
    assert len(t) == 8 and t[0] == 0 and t[4] == EPOCH_TOKENS and len(set(b - a for a, b in zip(t, t[1:]))) > 1
    assert [v for _, v in read_scalars(runs["2 ranks accumulate 2"])["train/tokens"]] == [*t[1:], 2 * EPOCH_TOKENS]


def test_the_mean_of_micro_batch_means_fails_the_same_comparison(runs, tmp_path):
    """loss=logits (tests/userpkg/text.py) is the same cross-entropy as a mean over each micro-batch's
    tokens: with one micro-batch per update it is the token-weighted run, with four it is not."""
    large = train(tmp_path / "large", "loss=logits", "data.batch_size=16")
    assert difference(large, runs["batch 16"]) <= BOUND  # one micro-batch: its mean is the token mean
    means = train(tmp_path / "means", "loss=logits", "data.batch_size=4")
    assert difference(large, means) > 1000 * BOUND
    assert loss_difference(large, means) > 1000 * BOUND
