"""``python -m trainer.sample RUN_DIR``: text from a trained character-level model.

Rebuilds the model from the run's ``config.yaml``, loads its weights from ``last.pt`` (or
``--checkpoint``), and continues ``--prompt`` one character at a time, each drawn from the model's
next-character distribution at ``--temperature`` among the ``--top-k`` likeliest (nanoGPT's
sampling). Characters map to token ids through the run's ``vocab.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from trainer.data.named import logits_of
from trainer.data.text import decode, encode
from trainer.errors import ConfigError, OneLineParser, one_line, refuse, require
from trainer.models import SEQUENCE_MODELS, build_model
from trainer.rundir.checkpoint import load_checkpoint


def load_model(run_dir: Path, checkpoint: Path | None = None) -> tuple[nn.Module, str]:
    """The run's model in eval mode, on the CPU, with its checkpoint's weights (``checkpoint``, else
    ``run_dir/last.pt``); and its vocabulary. Anything unusable is a ConfigError naming the
    argument that pointed at it: ``RUN_DIR`` or ``--checkpoint``."""
    if not run_dir.is_dir():
        raise ConfigError("RUN_DIR", f"{run_dir} is not a directory: give the run directory of a model=gpt run")
    config, vocab_file = run_dir / "config.yaml", run_dir / "vocab.json"
    if not config.is_file() or not vocab_file.is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no config.yaml and vocab.json: not a run of a character model")
    cfg = OmegaConf.load(config)
    if cfg.model.get("name") not in SEQUENCE_MODELS:
        raise ConfigError("RUN_DIR", f"{run_dir} trained model={cfg.model.get('name')}, which does not generate text")
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))["chars"]
    model = build_model(cfg.model, input_shape=(cfg.model.block_size,), num_classes=len(vocab))
    key, path = ("RUN_DIR", run_dir / "last.pt") if checkpoint is None else ("--checkpoint", checkpoint)
    try:
        model.load_state_dict(load_checkpoint(path, key)["model"])
    except RuntimeError as error:  # another model's weights: missing or unexpected keys, other shapes
        raise ConfigError(key, f"{path} holds another model than {config} describes ({one_line(error, 160)}): "
                               "give a checkpoint of this run") from None
    return model.eval(), vocab


@torch.no_grad()
def generate(
    model: nn.Module, prompt: torch.Tensor, num_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``prompt`` (1-D token ids) followed by ``num_tokens`` sampled ones; the model sees at most
    its last ``block_size`` tokens. ``top_k=1`` is greedy decoding."""
    tokens = prompt.clone()
    for _ in range(num_tokens):
        logits = logits_of(model(tokens[-model.block_size :].unsqueeze(0)))[0, -1].float() / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        choice = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
        tokens = torch.cat([tokens, choice])
    return tokens


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m trainer.sample", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run of model=gpt (holds config.yaml, vocab.json, last.pt)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights to use (default: RUN_DIR/last.pt)")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--chars", type=int, default=500, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="< 1 sharpens, > 1 flattens")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest characters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        require(args.chars >= 0, "--chars", f"got {args.chars}; expected 0 or more characters")
        require(args.temperature > 0, "--temperature", f"got {args.temperature}; expected > 0 (1 draws from the "
                                                       "model's own distribution)")
        require(args.top_k >= 1, "--top-k", f"got {args.top_k}; expected 1 or more (1 is greedy decoding)")
        require(bool(args.prompt), "--prompt", "empty: give at least one character to continue")
        model, vocab = load_model(args.run_dir, args.checkpoint)
    except ConfigError as error:
        refuse(error)
    unknown = sorted(set(args.prompt) - set(vocab))
    if unknown:
        refuse(f"--prompt: {''.join(unknown)!r} never occur in the training text; the vocabulary is {vocab!r}")
    prompt = encode(args.prompt, vocab)
    tokens = generate(model, prompt, args.chars, temperature=args.temperature, top_k=args.top_k,
                      generator=torch.Generator().manual_seed(args.seed))
    print(decode(tokens, vocab))


if __name__ == "__main__":
    main()
