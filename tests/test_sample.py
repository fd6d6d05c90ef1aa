"""python -m trainer.sample: text from a trained character model."""

from __future__ import annotations

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
