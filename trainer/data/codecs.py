"""How token ids become text and text token ids: the tokenizer a run was trained with.

- :class:`Characters`: one token per character, id = position in a table (``vocab.json``'s
  ``chars`` of ``data=shakespeare_char``, or nanoGPT's ``meta.pkl`` ``itos``).
- :class:`HFTokenizer`: a saved Hugging Face ``tokenizer.json`` (the ``tokenizers`` library).
- :class:`Tiktoken`: an OpenAI BPE (``gpt2``, ...) through ``tiktoken``, from its local cache only:
  nothing here reaches the network, so a machine without the files is told so in one line.

``tokenizers`` and ``tiktoken`` are imported only when such a tokenizer is used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainer.errors import ConfigError, one_line

#: ``data.tokenizer=tiktoken:NAME`` names one of tiktoken's encodings (e.g. ``tiktoken:gpt2``).
TIKTOKEN_PREFIX = "tiktoken:"


class Codec(Protocol):
    """Text to token ids and back."""

    @property
    def vocab_size(self) -> int:
        """Ids 0..vocab_size-1 have text (a model's padded vocabulary may be larger)."""

    def unknown(self, text: str) -> str:
        """The characters of ``text`` this codec cannot encode (none for byte-level BPEs)."""

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``."""

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids ``ids``."""


@dataclass(frozen=True)
class Characters:
    """One token per character: token i is ``table[i]``."""

    table: Sequence[str]
    ids: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", {char: i for i, char in enumerate(self.table)})

    @property
    def vocab_size(self) -> int:
        return len(self.table)

    def unknown(self, text: str) -> str:
        return "".join(sorted(set(text) - set(self.ids)))

    def encode(self, text: str) -> list[int]:
        return [self.ids[char] for char in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.table[i] for i in ids)


@dataclass(frozen=True)
class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (a saved ``tokenizer.json``)."""

    tokenizer: Any

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def unknown(self, text: str) -> str:
        return ""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


@dataclass(frozen=True)
class Tiktoken:
    """One of tiktoken's encodings (``gpt2``: GPT-2's 50257-token BPE)."""

    encoding: Any

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def unknown(self, text: str) -> str:
        return ""

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))


def hf_tokenizer(path: Path, key: str) -> HFTokenizer:
    """The ``tokenizer.json`` at ``path``; a ConfigError at ``key`` when it cannot be read."""
    if not path.is_file():
        raise ConfigError(key, f"no file at {path}: give a Hugging Face tokenizer.json (tokenizer.save(PATH))")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(key, f"{path} needs the tokenizers package: pip install tokenizers") from None
    try:
        return HFTokenizer(Tokenizer.from_file(str(path)))
    except Exception as error:  # not JSON, or not a tokenizer's
        raise ConfigError(key, f"{path} is not a Hugging Face tokenizer.json: {one_line(error, 160)}") from None


def tiktoken_cache() -> str:
    """Where tiktoken keeps its files: ``$TIKTOKEN_CACHE_DIR``, ``$DATA_GYM_CACHE_DIR`` or
    ``<tmp>/data-gym-cache`` (tiktoken's own order)."""
    return os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "data-gym-cache")


class _NotLocal(Exception):
    """tiktoken asked for a file its cache does not hold."""


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """tiktoken reads its cache first and downloads what is missing (``tiktoken.load.read_file``):
    here a missing file is an error at once, never a network request that hangs offline."""
    import tiktoken.load

    def refuse(blobpath: str) -> bytes:
        raise _NotLocal(blobpath)

    original = tiktoken.load.read_file
    tiktoken.load.read_file = refuse
    try:
        yield
    finally:
        tiktoken.load.read_file = original


def tiktoken_encoding(name: str, key: str) -> Tiktoken:
    """tiktoken's encoding ``name`` from its local cache; a ConfigError at ``key`` when tiktoken
    is not installed, the name is unknown, or its files are not on this machine."""
    try:
        import tiktoken
    except ImportError:
        raise ConfigError(key, f"{TIKTOKEN_PREFIX}{name} needs the tiktoken package: pip install tiktoken") from None
    if name not in tiktoken.list_encoding_names():
        raise ConfigError(key, f"tiktoken has no encoding {name!r}; it has {', '.join(tiktoken.list_encoding_names())}")
    try:
        with _no_downloads():
            return Tiktoken(tiktoken.get_encoding(name))
    except _NotLocal as missing:
        raise ConfigError(key, f"tiktoken's {name} files are not on this machine (not in {tiktoken_cache()}, "
                               f"e.g. {missing}) and nothing is downloaded here: copy a tiktoken cache there, "
                               "or set TIKTOKEN_CACHE_DIR to one") from None


def codec_of(spec: str, key: str) -> HFTokenizer | Tiktoken:
    """The tokenizer ``spec`` names: ``tiktoken:NAME``, else the path of a ``tokenizer.json``."""
    if spec.startswith(TIKTOKEN_PREFIX):
        return tiktoken_encoding(spec[len(TIKTOKEN_PREFIX):], key)
    return hf_tokenizer(Path(spec).expanduser(), key)
