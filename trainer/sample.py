"""``python -m trainer.sample RUN_DIR``: text from a trained language model (``model=gpt``, or
``model=hf`` with ``model.task=causal_lm``).

Rebuilds the model from the run's ``config.yaml``, loads its weights from ``last.pt`` (or
``--checkpoint``), and continues ``--prompt`` one token at a time, each drawn from the model's
next-token distribution at ``--temperature`` among the ``--top-k`` likeliest (nanoGPT's
sampling). Text becomes tokens and tokens text through the run's tokenizer (:mod:`trainer.data.codecs`):
its characters (``vocab.json``, ``data=shakespeare_char``), or for ``data=tokens`` (``tokens.json``)
its ``data.tokenizer`` (a saved Hugging Face ``tokenizer.json``, or ``tiktoken:gpt2`` when
tiktoken's files are on this machine) or nanoGPT's ``meta.pkl`` characters (``itos``), or for
``data=hf_dataset`` the tokenizer its run keeps in ``tokenizer/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from trainer.data.codecs import Characters, Codec, codec_of
from trainer.data.hf_dataset import TOKENIZER_DIR
from trainer.data.named import logits_of
from trainer.data.tokens import TOKENS_JSON, read_meta
from trainer.errors import ConfigError, OneLineParser, one_line, refuse, require
from trainer.models import SEQUENCE_MODELS, build_model
from trainer.rundir.checkpoint import load_checkpoint


def run_codec(run_dir: Path) -> tuple[Codec, int]:
    """The run's tokenizer and the model's vocabulary size (which may pad the tokenizer's): from
    ``vocab.json`` (characters) or ``tokens.json`` (token data). A ConfigError at ``RUN_DIR`` when
    the run kept neither, or nothing that decodes its tokens."""
    chars, tokens, folder = run_dir / "vocab.json", run_dir / TOKENS_JSON, run_dir / TOKENIZER_DIR
    if folder.is_dir():  # data=hf_dataset: the model's vocabulary is the tokenizer's, added tokens included
        codec = codec_of(str(folder / "tokenizer.json"), "RUN_DIR")
        return codec, codec.vocab_size
    if chars.is_file():
        vocab = json.loads(chars.read_text(encoding="utf-8"))["chars"]
        return Characters(vocab), len(vocab)
    if not tokens.is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no vocab.json, {TOKENS_JSON} or {TOKENIZER_DIR}/: not a run of a "
                                     "language model on data=shakespeare_char, data=tokens or data=hf_dataset")
    saved = json.loads(tokens.read_text(encoding="utf-8"))
    decoder, vocab_size = saved["tokenizer"], saved["vocab_size"]
    if decoder is None:
        raise ConfigError("RUN_DIR", f"{run_dir} trained on token data with no tokenizer to decode it: train with "
                                     "data.tokenizer=TOKENIZER_JSON (or tiktoken:gpt2), or a meta.pkl with itos")
    if decoder == "meta.pkl":
        itos = read_meta(run_dir)["itos"]
        return Characters([itos[i] for i in range(len(itos))]), vocab_size
    return codec_of(decoder if decoder.startswith("tiktoken:") else str(run_dir / decoder), "RUN_DIR"), vocab_size


def load_model(run_dir: Path, checkpoint: Path | None = None) -> tuple[nn.Module, Codec]:
    """The run's model in eval mode, on the CPU, with its checkpoint's weights (``checkpoint``, else
    ``run_dir/last.pt``); and its tokenizer. Anything unusable is a ConfigError naming the
    argument that pointed at it: ``RUN_DIR`` or ``--checkpoint``."""
    if not run_dir.is_dir():
        raise ConfigError("RUN_DIR", f"{run_dir} is not a directory: give the run directory of a language model's run")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no config.yaml: not a run directory")
    cfg = OmegaConf.load(config)
    causal_hf = cfg.model.get("name") == "hf" and cfg.model.get("task") == "causal_lm"
    if cfg.model.get("name") not in SEQUENCE_MODELS and not causal_hf:
        raise ConfigError("RUN_DIR", f"{run_dir} trained model={cfg.model.get('name')}, which does not generate text")
    codec, vocab_size = run_codec(run_dir)
    shape = (cfg.model.block_size,) if "block_size" in cfg.model else ()  # model=hf: its config says
    model = build_model(cfg.model, input_shape=shape, num_classes=vocab_size)
    key, path = ("RUN_DIR", run_dir / "last.pt") if checkpoint is None else ("--checkpoint", checkpoint)
    try:
        model.load_state_dict(load_checkpoint(path, key)["model"])
    except RuntimeError as error:  # another model's weights: missing or unexpected keys, other shapes
        raise ConfigError(key, f"{path} holds another model than {config} describes ({one_line(error, 160)}): "
                               "give a checkpoint of this run") from None
    return model.eval(), codec


def context_length(model: nn.Module) -> int:
    """The most tokens ``model`` attends to: a GPT's ``block_size``, a Hugging Face model's positions."""
    if hasattr(model, "block_size"):
        return model.block_size
    config = model.config
    return getattr(config, "n_positions", None) or config.max_position_embeddings


@torch.no_grad()
def generate(
    model: nn.Module, prompt: torch.Tensor, num_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
    generator: torch.Generator | None = None, vocab_size: int | None = None,
) -> torch.Tensor:
    """``prompt`` (1-D token ids) followed by ``num_tokens`` sampled ones; the model sees at most
    its last ``block_size`` tokens. ``top_k=1`` is greedy decoding. ``vocab_size``: only ids below
    it are drawn (a vocabulary padded past the tokenizer's has rows that name no text)."""
    tokens, context = prompt.clone(), context_length(model)
    for _ in range(num_tokens):
        logits = logits_of(model(tokens[-context:].unsqueeze(0)))[0, -1, :vocab_size].float() / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        choice = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
        tokens = torch.cat([tokens, choice])
    return tokens


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m trainer.sample", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run of model=gpt or a causal model=hf (holds config.yaml, "
                                                   "last.pt, and vocab.json, tokens.json or tokenizer/)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights to use (default: RUN_DIR/last.pt)")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--tokens", "--chars", dest="tokens", type=int, default=500,
                        help="tokens to generate (characters, for a character model)")
    parser.add_argument("--temperature", type=float, default=0.8, help="< 1 sharpens, > 1 flattens")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest tokens")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        require(args.tokens >= 0, "--tokens", f"got {args.tokens}; expected 0 or more tokens to generate")
        require(args.temperature > 0, "--temperature", f"got {args.temperature}; expected > 0 (1 draws from the "
                                                       "model's own distribution)")
        require(args.top_k >= 1, "--top-k", f"got {args.top_k}; expected 1 or more (1 is greedy decoding)")
        require(bool(args.prompt), "--prompt", "empty: give at least one character to continue")
        model, codec = load_model(args.run_dir, args.checkpoint)
    except ConfigError as error:
        refuse(error)
    unknown = codec.unknown(args.prompt)
    if unknown:
        refuse(f"--prompt: {unknown!r} never occur in the training text; the vocabulary is "
               f"{codec.decode(range(codec.vocab_size))!r}")
    prompt = torch.tensor(codec.encode(args.prompt), dtype=torch.long)
    if not len(prompt):
        refuse(f"--prompt: {args.prompt!r} is no token of the run's tokenizer: give other text")
    tokens = generate(model, prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                      generator=torch.Generator().manual_seed(args.seed), vocab_size=codec.vocab_size)
    print(codec.decode(tokens.tolist()))


if __name__ == "__main__":
    main()
