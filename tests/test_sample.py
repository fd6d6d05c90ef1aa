"""python -m trainer.sample: text from a trained language model, decoded with its run's tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import QUIET, TINY, compose_config, run_cli
from trainer.app.run import train
from trainer.sample import generate, load_model

TEXT = "to be or not to be that is the question\n" * 60


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    run_dir = root / "run"
    train(compose_config("model=gpt", "data=shakespeare_char", f"data.path={root / 'text.txt'}", "data.batch_size=8",
                         "model.block_size=16", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                         "schedule=cosine", "trainer.max_steps=200", "optimizer.lr=0.01", base=QUIET), run_dir)
    return run_dir


def test_top_k_1_is_greedy_decoding(gpt_run):
    model, codec = load_model(gpt_run)
    prompt = torch.tensor(codec.encode("to be"))
    tokens = generate(model, prompt, 25, top_k=1)
    expected = prompt
    with torch.no_grad():
        for _ in range(25):  # the argmax at every step, the context cut to the last block_size tokens
            expected = torch.cat([expected, model(expected[-16:][None])[0, -1].argmax()[None]])
    assert torch.equal(tokens, expected)
    assert len(tokens) == 5 + 25


def test_the_cli_continues_the_prompt_reproducibly(gpt_run):
    def sample(seed):
        return run_cli("trainer.sample", [str(gpt_run), "--prompt", "to be", "--chars", "40", "--seed", str(seed)]).stdout

    first = sample(0)
    assert first.startswith("to be") and len(first) == 5 + 40 + 1  # print's newline
    assert set(first[:-1]) <= set(TEXT)
    assert sample(0) == first and sample(1) != first


def test_a_trained_model_has_learned_its_text(gpt_run):
    model, codec = load_model(gpt_run)
    prompt = "that is the "
    tokens = generate(model, torch.tensor(codec.encode(prompt)), 9, top_k=1)
    assert codec.decode(tokens[len(prompt):].tolist()) == "question\n"


def test_a_prompt_with_unseen_characters_is_one_clear_error(gpt_run):
    proc = run_cli("trainer.sample", [str(gpt_run), "--prompt", "TO BE"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --prompt: 'BEOT' never occur in the training text")


def test_a_classifier_run_is_refused(tmp_path):
    train(compose_config("schedule=cosine", "trainer.max_epochs=1", base=TINY), tmp_path)
    (tmp_path / "vocab.json").write_text('{"chars": "ab", "size": 2}')
    proc = run_cli("trainer.sample", [str(tmp_path)], check=False)
    assert proc.returncode == 2 and "trained model=mlp, which does not generate text" in proc.stderr


def test_every_bad_argument_is_one_line_naming_it_and_exit_2(gpt_run, tmp_path):
    """Sample's own arguments, never the trainer's keys (a missing last.pt named trainer.resume)."""
    train(compose_config("schedule=cosine", "trainer.max_epochs=1", base=TINY), tmp_path / "mlp")
    no_weights = tmp_path / "copy"
    no_weights.mkdir()
    for name in ("config.yaml", "vocab.json"):
        (no_weights / name).write_bytes((gpt_run / name).read_bytes())
    cases = [
        ([str(tmp_path / "nope")], f"error: RUN_DIR: {tmp_path / 'nope'} is not a directory"),
        ([str(no_weights)], f"error: RUN_DIR: no file at {no_weights / 'last.pt'}"),
        ([str(gpt_run), "--checkpoint", str(tmp_path / "x.pt")], f"error: --checkpoint: no file at {tmp_path / 'x.pt'}"),
        ([str(gpt_run), "--checkpoint", str(tmp_path / "mlp" / "last.pt")],
         f"error: --checkpoint: {tmp_path / 'mlp' / 'last.pt'} holds another model than {gpt_run / 'config.yaml'}"),
        ([str(gpt_run), "--temperature", "0"], "error: --temperature: got 0.0; expected > 0"),
        ([str(gpt_run), "--chars", "-1"], "error: --tokens: got -1; expected 0 or more tokens"),
        ([str(gpt_run), "--top-k", "0"], "error: --top-k: got 0; expected 1 or more"),
        ([str(gpt_run), "--prompt", ""], "error: --prompt: empty"),
    ]
    for args, start in cases:
        proc = run_cli("trainer.sample", args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(start), (args, proc.stderr)
        assert proc.stdout == ""
    assert sorted(p.name for p in no_weights.iterdir()) == ["config.yaml", "vocab.json"]


# --- token data: a BPE tokenizer trained here, GPT-2's through tiktoken ------------------------


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A byte-level BPE trained on TEXT with ``tokenizers``, TEXT encoded into nanoGPT's files, and
    model=gpt trained on them through the CLI with data.tokenizer naming the saved tokenizer.json
    (the model's vocabulary padded by 4 past the tokenizer's). Returns (run dir, tokenizer path)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("bpe")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.save(str(root / "tokenizer.json"))
    ids = np.array(tokenizer.encode(TEXT).ids, dtype=np.uint16)
    cut = int(0.9 * len(ids))
    ids[:cut].tofile(root / "train.bin")
    ids[cut:].tofile(root / "val.bin")
    run_dir = root / "run"
    run_cli("trainer", [*QUIET, "model=gpt", "data=tokens", f"data.path={root}", f"data.tokenizer={root / 'tokenizer.json'}",
                        f"data.vocab_size={tokenizer.get_vocab_size() + 4}", "data.batch_size=8", "model.block_size=16",
                        "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "schedule=cosine",
                        "trainer.max_steps=150", "optimizer.lr=0.01", f"hydra.run.dir={run_dir}"])
    return run_dir, root / "tokenizer.json"


def test_sample_decodes_a_bpe_run_with_its_saved_tokenizer(bpe_run):
    from tokenizers import Tokenizer

    run_dir, original = bpe_run
    assert (run_dir / "tokenizer.json").read_bytes() == original.read_bytes()  # kept with the run
    tokenizer = Tokenizer.from_file(str(original))
    out = run_cli("trainer.sample", [str(run_dir), "--prompt", "to be", "--tokens", "12", "--top-k", "1"]).stdout
    # What the model picks greedily, decoded by the tokenizer itself.
    model, codec = load_model(run_dir)
    prompt = torch.tensor(tokenizer.encode("to be").ids)
    tokens = generate(model, prompt, 12, top_k=1, vocab_size=tokenizer.get_vocab_size())
    assert out == tokenizer.decode(tokens.tolist()) + "\n"
    assert codec.encode("to be") == prompt.tolist() and codec.vocab_size == tokenizer.get_vocab_size()
    assert tokenizer.decode(tokenizer.encode(out).ids) == out  # text of that tokenizer, round trip
    assert out.startswith("to be") and set(out.split()) <= set(TEXT.split())  # the trained text's words only
    assert "question" in out  # learned: 12 BPE tokens reach past the end of a line


def test_a_tiktoken_run_without_its_files_here_is_one_line(bpe_run, tmp_path):
    run_dir, _ = bpe_run
    copy = tmp_path / "gpt2_run"
    copy.mkdir()
    (copy / "config.yaml").write_bytes((run_dir / "config.yaml").read_bytes())
    (copy / "tokens.json").write_text(json.dumps({"vocab_size": 50304, "block_size": 16, "tokenizer": "tiktoken:gpt2"}))
    empty = tmp_path / "cache"
    empty.mkdir()
    proc = run_cli("trainer.sample", [str(copy)], check=False, env={"TIKTOKEN_CACHE_DIR": str(empty)})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: RUN_DIR: tiktoken's gpt2 files are not on this machine (not in {empty}")


def test_gpt2_bpe_through_tiktoken_when_its_files_are_here():
    from trainer.data.codecs import tiktoken_encoding
    from trainer.errors import ConfigError

    try:
        codec = tiktoken_encoding("gpt2", "data.tokenizer")
    except ConfigError as error:
        pytest.skip(f"no local tiktoken cache: {error}")
    assert codec.vocab_size == 50257 and codec.encode("Hello world") == [15496, 995]  # GPT-2's own ids
    assert codec.decode([15496, 995]) == "Hello world"
