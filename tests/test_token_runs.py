"""model=gpt on data=tokens through the real CLI: training, what is logged, exact resume mid-epoch in
one process and under torchrun, sampling with meta.pkl's characters, and the inputs refused."""

from __future__ import annotations

import json
import math
import pickle

import pytest

from tests.conftest import QUIET, REPO, run_cli
from tests.data.test_tokens import write_tokens
from tests.test_distributed import assert_same_parameters, model_of, torchrun
from trainer.components import shipped_targets
from trainer.data import CLASS_DATA, SEQUENCE_DATA
from trainer.models import FIXED_INPUT_MODELS, NAMED_MODELS, SEQUENCE_MODELS
from trainer.rundir.events import read_scalars

GPT = ["model=gpt", "model.block_size=16", "model.n_layer=1", "model.n_head=2", "model.n_embd=16"]
# 96 windows per epoch, global batch 16: 6 updates per epoch, 9 updates = 1.5 epochs;
# step-00000003.pt is mid-epoch.
RUN = [*QUIET, *GPT, "model.dropout=0.0", "data=tokens", "data.dtype=uint32", "data.batch_size=8",
       "data.windows_per_epoch=96", "data.val_windows=12", "trainer.global_batch_size=16", "trainer.max_steps=9",
       "schedule=cosine", "optimizer.lr=0.01", "trainer.checkpoint_every_n_steps=3", "trainer.keep_last_n=10"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    write_tokens(root, train=20_000, val=2_000, vocab=40, dtype="uint32")
    return root


@pytest.fixture(scope="module")
def single(folder, tmp_path_factory):
    """One process accumulating 2 micro-batches of 8."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run_cli("trainer", [*RUN, f"data.path={folder}", f"hydra.run.dir={run_dir}"])
    return run_dir


def test_a_run_logs_the_tokens_it_trained_on_and_their_rate(single, folder):
    scalars = read_scalars(single)
    # 16 windows of 16 tokens per update
    assert scalars["train/tokens"] == [(u, 256.0 * (u + 1)) for u in range(9)]
    rates = scalars["perf/tokens_per_s"]
    assert rates and all(value > 0 for _, value in rates)
    assert "perf/mfu" not in scalars  # a CPU has no peak in the table
    assert [s for s, _ in scalars["val/loss"]] == [6, 9]
    saved = json.loads((single / "tokens.json").read_text())
    assert saved == {"vocab_size": 40, "block_size": 16, "tokenizer": "meta.pkl"}
    assert (single / "meta.pkl").read_bytes() == (folder / "meta.pkl").read_bytes()


def test_a_run_resumed_mid_epoch_ends_as_the_one_that_never_stopped(single, folder, tmp_path):
    resumed = tmp_path / "resumed"
    run_cli("trainer", [*RUN, f"data.path={folder}", f"trainer.resume={single / 'step-00000003.pt'}",
                        f"hydra.run.dir={resumed}"])
    ours, theirs = read_scalars(resumed), read_scalars(single)
    for tag in ("train/lr", "train/loss", "train/tokens", "val/loss"):
        assert ours[tag] == [(s, v) for s, v in theirs[tag] if s >= 3], tag
    a, b = model_of(resumed / "last.pt"), model_of(single / "last.pt")
    assert all(a[k].equal(b[k]) for k in a)


def test_two_ranks_train_like_one_and_resume_its_mid_epoch_checkpoint(single, folder, tmp_path):
    """2 DDP ranks of one micro-batch of 8 each: the same 16 windows per update as one process
    accumulating 2, from its mid-epoch checkpoint on."""
    run_dir = tmp_path / "ddp"
    proc = torchrun(*RUN, f"data.path={folder}", "trainer.strategy=ddp", f"trainer.resume={single / 'step-00000003.pt'}",
                    f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = read_scalars(run_dir), read_scalars(single)
    assert ours["train/tokens"] == theirs["train/tokens"][3:]
    for tag in ("train/loss", "val/loss"):
        assert [v for _, v in ours[tag]] == pytest.approx([v for s, v in theirs[tag] if s >= 3], abs=1e-5), tag
    assert_same_parameters(model_of(run_dir / "last.pt"), model_of(single / "last.pt"))


def test_sample_decodes_with_meta_pkls_characters(single, folder):
    itos = pickle.loads((folder / "meta.pkl").read_bytes())["itos"]
    out = run_cli("trainer.sample", [str(single), "--prompt", "ABC", "--tokens", "30"]).stdout
    assert out.startswith("ABC") and len(out) == 3 + 30 + 1 and set(out[:-1]) <= set(itos.values())
    proc = run_cli("trainer.sample", [str(single), "--prompt", "xyz"], check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --prompt: 'xyz' never occur in the training text")


def test_token_budgets_count_the_windows_tokens(folder, tmp_path):
    """trainer.max_tokens and schedule.interval=token: 16 windows × 16 tokens = 256 per update."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [*RUN, f"data.path={folder}", "trainer.max_steps=null", "trainer.max_tokens=1000",
                        "schedule.interval=token", f"hydra.run.dir={run_dir}"])
    lrs = read_scalars(run_dir)["train/lr"]
    assert len(lrs) == 4  # ceil(1000 / 256)
    # cosine over 4 × 256 tokens, read at the update's first token
    assert [v for _, v in lrs] == pytest.approx([0.01 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)], rel=1e-6)


def test_every_shipped_data_and_model_is_classed_for_the_check_that_they_can_meet():
    """A new shipped source or model must say whether it holds (reads) token sequences."""
    data = {path.stem for path in (REPO / "conf" / "data").glob("*.yaml")}
    # torch_dataset: a user's, either kind; hf_dataset: named batches, judged by the first-batch check
    assert data == {*SEQUENCE_DATA, *CLASS_DATA, "torch_dataset", "hf_dataset"}
    # hf: named batches of any kind (a causal LM or a classifier), judged by the first-batch check
    assert set(shipped_targets("model")) == {*SEQUENCE_MODELS, *FIXED_INPUT_MODELS, *NAMED_MODELS}


@pytest.mark.parametrize("args, key, message", [
    (["model=cnn", "data=tokens"], "model", "data=tokens holds token sequences; model=cnn classifies"),
    ([*GPT, "data=synthetic"], "data", "model=gpt reads token sequences and data=synthetic holds fixed-size"),
    ([*GPT, "data=tokens"], "data.path", "missing: set data.path"),
])
def test_parts_that_cannot_meet_are_one_line_and_exit_2(args, key, message, tmp_path):
    proc = run_cli("trainer", [*QUIET, *args, f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"error: {key}: ") and message in proc.stderr and not (tmp_path / "run").exists()


def test_a_binary_file_given_as_text_is_refused_in_one_line(folder, tmp_path):
    """nanoGPT's train.bin of small ids is valid UTF-8 (ASCII and NULs): it used to train as text."""
    proc = run_cli("trainer", [*QUIET, *GPT, "data=shakespeare_char", f"data.path={folder / 'train.bin'}",
                               f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    first_nul = (folder / "train.bin").read_bytes().index(b"\0")  # ids below 128: one character per byte
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"error: data.path: {folder / 'train.bin'} holds a NUL byte (character {first_nul})")
    assert "data=tokens" in proc.stderr and not (tmp_path / "run").exists()
