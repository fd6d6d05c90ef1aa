"""Schedules and budgets in tokens over padded rows of several lengths (``data=hf_dataset``
unpacked): an update's tokens are no function of its index, so the run counts them from its
batches (``trainer.training.counts.TokenCount``: the ``attention_mask`` ones, summed over the
micro-batches and ranks) and update u trains at the schedule's value at t = the tokens trained
before it. Expectations: the tokens each update's batches hold, read from the batches the step was
given (a wrapper around it, not the count under test), and seed 000's formula at their running sum."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import QUIET, TINY, compose_config, run_cli
from tests.test_bad_input import assert_one_line_error
from tests.test_hf_dataset import GPT2, corpus  # noqa: F401 (a fixture)
from tests.test_schedules import seed000_get_lr
from tests.test_units import killed_and_straight
from trainer.app.run import train
from trainer.errors import ConfigError
from trainer.preview import write_preview
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.schedules.curve import read_lr_csv
from trainer.training.step import TrainStep

pytest.importorskip("transformers")

WARMUP, LR, MIN_LR = 100, 0.01, 1e-4


def padded_run(corpus, tmp_path, *overrides: str) -> list[str]:  # noqa: F811
    """96 rows of 2..12 words padded per micro-batch of 5, two micro-batches per update: 9 updates
    an epoch (the last 6 rows of each are dropped), a warmup-cosine counted in their tokens."""
    return [*QUIET, *GPT2, "data=hf_dataset", f"data.tokenizer={corpus}/tokenizer", f"data.cache_dir={tmp_path}/cache",
            f"data.files={{train:{corpus}/train.jsonl,validation:{corpus}/val.jsonl}}", "data.batch_size=5",
            "trainer.accumulate_grad_batches=2", "schedule=warmup_cosine", "schedule.interval=token",
            f"schedule.warmup_steps={WARMUP}", f"schedule.min_lr={MIN_LR}", f"optimizer.lr={LR}", *overrides]


def record_tokens(monkeypatch, tokens: list[int]) -> None:
    """Append each update's tokens: the attention_mask ones of the micro-batches the step is given."""
    original = TrainStep.__call__

    def call(self, micro_batches, update):
        tokens.append(sum(int(batch["attention_mask"].sum()) for batch in micro_batches))
        return original(self, micro_batches, update)

    monkeypatch.setattr(TrainStep, "__call__", call)


def running_sums(per_update: list[int]) -> list[int]:
    """t of every update and of the one after the last: the tokens trained before it."""
    sums = [0]
    for tokens in per_update:
        sums.append(sums[-1] + tokens)
    return sums


def test_every_update_trains_at_the_formula_of_the_tokens_before_it_and_the_budget_ends_the_run(
    corpus, tmp_path, monkeypatch  # noqa: F811
):
    budget = 1500  # about 14 updates: into the second epoch
    run_dir, per_update = tmp_path / "run", []
    record_tokens(monkeypatch, per_update)
    train(compose_config(*padded_run(corpus, tmp_path, f"trainer.max_tokens={budget}"), base=[]), run_dir)
    t = running_sums(per_update)
    assert len(set(per_update)) > 3  # the rows' lengths vary: a count per update of one size would not fit
    assert t[-2] < budget <= t[-1] and len(per_update) > 9  # ends at the first update that reaches the budget
    logged = read_scalars(run_dir)
    assert [v for _, v in logged["train/t"]] == t[:-1]
    assert [v for _, v in logged["train/tokens"]] == t[1:]
    expected = [seed000_get_lr(t[u], WARMUP, budget, LR, MIN_LR) for u in range(len(per_update))]
    assert [v for _, v in logged["train/lr"]] == pytest.approx(expected, rel=1e-6)  # the event file holds float32
    rows = read_lr_csv(run_dir / "lr.csv")  # written as the run logs: the LR applied, at its t
    assert [r["t"] for r in rows] == t[:-1]
    assert [r["lr/decay"] for r in rows] == pytest.approx(expected, rel=1e-12)
    last = load_checkpoint(run_dir / "last.pt")
    assert last["update"] == len(per_update) and last["step"]["tokens"] == {"update": len(per_update), "t": t[-1]}


def test_a_run_in_padded_tokens_killed_by_sigkill_resumes_on_the_same_count(corpus, tmp_path):  # noqa: F811
    """SIGKILL after the first validation (update 9; checkpoints every 4 updates), then resume: the
    same parameters, t and LR at every logged update as a run never killed."""
    run = padded_run(corpus, tmp_path, "trainer.max_tokens=2200", "trainer.checkpoint_every_n_steps=4")
    killed, straight = killed_and_straight(run, tmp_path)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["update"] == b["update"] > 18 and a["step"]["tokens"] == b["step"]["tokens"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for tag in ("train/t", "train/lr"):
        assert read_scalars(killed)[tag] == read_scalars(straight)[tag], tag


def test_the_preview_draws_padded_tokens_against_the_count_it_is_given_and_says_so(corpus, tmp_path, capsys):  # noqa: F811
    cfg = compose_config(*padded_run(corpus, tmp_path, "trainer.max_tokens=1000"), base=[])
    with pytest.raises(ConfigError, match="tokens per update you expect") as refused:
        write_preview(cfg.copy(), tmp_path / "refused")
    assert refused.value.key == "preview.tokens_per_update" and not (tmp_path / "refused").exists()
    rows = write_preview(cfg, tmp_path / "preview", tokens_per_update=120)
    assert [r["t"] for r in rows] == [120 * u for u in range(9)]  # 9 × 120 tokens first reach 1000
    assert [r["lr/decay"] for r in rows] == pytest.approx([seed000_get_lr(120 * u, WARMUP, 1000, LR, MIN_LR)
                                                           for u in range(9)], rel=1e-12)
    assert "an estimated count (preview.tokens_per_update)" in capsys.readouterr().out


@pytest.mark.parametrize(("overrides", "key", "words"), [
    (["trainer.max_epochs=2"], "schedule.interval", "set trainer.max_tokens"),
    (["schedule.interval=step", "schedule.total_steps=50", "trainer.max_tokens=1000"], "trainer.max_tokens",
     "count the schedule in tokens"),
    (["trainer.max_tokens=1000", "trainer.unfreeze=[{at: 100, modules: [lm_head]}]"], "trainer.unfreeze",
     "no update index gives"),
])
def test_what_a_count_known_only_as_the_run_goes_cannot_do_is_one_line(corpus, tmp_path, overrides, key, words):  # noqa: F811
    with pytest.raises(ConfigError, match=words) as refused:
        train(compose_config(*padded_run(corpus, tmp_path, *overrides), base=[]), tmp_path / "run")
    assert refused.value.key == key and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("given", "key"), [
    ("preview.tokens_per_update=0", "preview.tokens_per_update"),  # an estimate must be positive
    ("preview.tokens_per_update=many", "preview.tokens_per_update"),
    ("preview.tokens_per_updat=100", "preview.tokens_per_updat"),  # a typo is named, not ignored
])
def test_a_bad_tokens_per_update_is_one_line_and_writes_nothing(tmp_path, given, key):
    run_dir = tmp_path / "p"
    proc = run_cli("trainer.preview", [*TINY, given, f"hydra.run.dir={run_dir}"], check=False)
    assert_one_line_error(proc, key)
    assert not run_dir.exists()
