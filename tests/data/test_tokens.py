"""data=tokens: nanoGPT's train.bin/val.bin folders, windows by index, validation windows, the
checks before training and the errors mid-run."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from tests.conftest import compose_config
from trainer.data import build_dataset, data_spec
from trainer.data.batches import stream_seed
from trainer.data.loading import TrainBatches, rank_batches
from trainer.data.source import DataSpec
from trainer.data.tokens import TokenFiles, tokens
from trainer.errors import ConfigError, DataError

BLOCK = 16


def write_tokens(folder, *, train=5000, val=700, vocab=50, dtype="uint16", meta=True, seed=0):
    """A nanoGPT-format folder: train.bin and val.bin of random ids below ``vocab`` (and meta.pkl
    with vocab_size and itos); returns the two arrays as written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {split: rng.integers(0, vocab, size, dtype=np.int64).astype(dtype) for split, size in
              (("train", train), ("val", val))}
    for split, array in arrays.items():
        array.tofile(folder / f"{split}.bin")
    if meta:
        with (folder / "meta.pkl").open("wb") as file:
            pickle.dump({"vocab_size": vocab, "itos": {i: chr(65 + i) for i in range(vocab)}}, file)
    return arrays["train"], arrays["val"]


def build(folder, **given) -> TokenFiles:
    keys = {"dtype": "uint16", "vocab_size": None, "block_size": BLOCK, "windows_per_epoch": None,
            "val_windows": None, "tokenizer": None, **given}
    return tokens(path=str(folder), **keys)


@pytest.mark.parametrize("dtype, vocab", [("uint16", 50), ("uint16", 65535), ("uint32", 70000)])
def test_windows_are_the_files_tokens_at_offsets_drawn_from_seed_epoch_and_batch(tmp_path, dtype, vocab):
    train, _ = write_tokens(tmp_path, dtype=dtype, vocab=vocab, meta=False)
    data = build(tmp_path, dtype=dtype, vocab_size=vocab)
    assert data.num_classes == vocab and data.input_shape == (BLOCK,) and data.num_train == (5000 - 1) // BLOCK
    epoch = data.train_epoch(8, seed=3, epoch=2)
    assert len(epoch) == data.num_train // 8
    for i in (0, 5, len(epoch) - 1):
        # nanoGPT's draw, seeded by the batch's index: 8 starts in 0..N-BLOCK-1
        generator = torch.Generator().manual_seed(stream_seed(seed=3, epoch=2, index=i))
        starts = torch.randint(0, 5000 - BLOCK, (8,), generator=generator).tolist()
        inputs, targets = epoch[i]
        assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape == (8, BLOCK)
        expected = np.stack([train[s : s + BLOCK + 1] for s in starts]).astype(np.int64)
        assert torch.equal(inputs, torch.from_numpy(expected[:, :-1]))
        assert torch.equal(targets, torch.from_numpy(expected[:, 1:]))
    again = build(tmp_path, dtype=dtype, vocab_size=vocab).train_epoch(8, seed=3, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(epoch[4], again[4]))  # the same batch, read twice
    other_epoch, other_seed = data.train_epoch(8, seed=3, epoch=3)[4], data.train_epoch(8, seed=4, epoch=2)[4]
    assert not torch.equal(epoch[4][0], other_epoch[0]) and not torch.equal(epoch[4][0], other_seed[0])
    with pytest.raises(IndexError):
        epoch[len(epoch)]


@pytest.mark.parametrize("world_size, accumulate", [(2, 1), (2, 2), (4, 1)])
def test_the_ranks_read_disjoint_slices_that_make_up_one_processs_global_batch(tmp_path, world_size, accumulate):
    write_tokens(tmp_path)
    data = build(tmp_path, windows_per_epoch=160)  # 20 batches of 8
    per_update = world_size * accumulate
    one = TrainBatches(data, 8, 0, torch.device("cpu"), 20 // per_update, accumulate=per_update)
    ranks = [TrainBatches(data, 8, 0, torch.device("cpu"), 20 // per_update, accumulate=accumulate, rank=r,
                          world_size=world_size) for r in range(world_size)]
    indices = [set(rank_batches(20, start_batch=0, rank=r, world_size=world_size, accumulate=accumulate))
               for r in range(world_size)]
    assert all(not (a & b) for k, a in enumerate(indices) for b in indices[k + 1:])  # disjoint
    assert set().union(*indices) == set(range(20 // per_update * per_update))
    for update, (whole, *parts) in enumerate(zip(one.epoch(0, 0), *(rank.epoch(0, 0) for rank in ranks))):
        together = [batch for part in parts for batch in part]  # rank 0's micro-batches, then rank 1's, ...
        assert len(whole) == len(together) == per_update
        for (x, y), (x_rank, y_rank) in zip(whole, together):
            assert torch.equal(x, x_rank) and torch.equal(y, y_rank), update
    # A resume at update 3 reads on from the same windows, on any rank.
    later = next(ranks[-1].epoch(0, 3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(later, list(ranks[-1].epoch(0, 0))[3]))


def test_validation_reads_fixed_windows_whole_or_evenly_spaced(tmp_path):
    _, val = write_tokens(tmp_path)
    every = torch.cat([x for x, _ in build(tmp_path).val_batches(7)])
    count = (700 - 1) // BLOCK  # 43 whole windows end to end
    assert every.shape == (count, BLOCK)
    assert torch.equal(every.flatten(), torch.from_numpy(val[: count * BLOCK].astype(np.int64)))
    targets = torch.cat([y for _, y in build(tmp_path).val_batches(64)])
    assert torch.equal(targets.flatten(), torch.from_numpy(val[1 : count * BLOCK + 1].astype(np.int64)))
    spaced = list(build(tmp_path, val_windows=5).val_batches(2))
    assert [len(x) for x, _ in spaced] == [2, 2, 1]
    last = 700 - BLOCK - 1  # the last start whose window and target fit
    starts = [0, last // 4, last // 2, 3 * last // 4, last]
    inputs = torch.cat([x for x, _ in spaced])
    for row, start in zip(inputs, starts):
        assert torch.equal(row, torch.from_numpy(val[start : start + BLOCK].astype(np.int64)))


def test_an_epoch_holds_no_token_only_where_to_read_them(tmp_path):
    """What a DataLoader worker is sent, and what the run holds, is the same few hundred bytes
    whatever the file's size: the windows are read from the disk per batch."""
    write_tokens(tmp_path, train=2_000_000)
    assert (tmp_path / "train.bin").stat().st_size == 4_000_000
    data = build(tmp_path)
    assert len(pickle.dumps(data)) < 1000 and len(pickle.dumps(data.train_epoch(8, seed=0, epoch=0))) < 1000


def test_the_spec_is_read_from_the_file_sizes_and_meta_as_the_built_data_says(tmp_path):
    write_tokens(tmp_path, train=4321, vocab=77)
    cfg = compose_config("model=gpt", f"data.path={tmp_path}", "model.block_size=16", "data=tokens", base=[])
    spec, built = data_spec(cfg.data), build_dataset(cfg.data, seed=0)
    assert spec == DataSpec((16,), 77, (4321 - 1) // 16)
    assert spec == DataSpec(built.input_shape, built.num_classes, built.num_train)
    assert data_spec(compose_config("model=gpt", f"data.path={tmp_path}", "data=tokens", "data.vocab_size=128",
                                    "data.windows_per_epoch=999", base=[]).data)[1:3] == (128, 999)


def damaged(tmp_path, case):
    write_tokens(tmp_path, meta=case != "no_vocab")
    if case == "no_val":
        (tmp_path / "val.bin").unlink()
    elif case == "odd_bytes":
        (tmp_path / "train.bin").write_bytes((tmp_path / "train.bin").read_bytes() + b"\0")
    elif case == "short":
        np.zeros(BLOCK, dtype=np.uint16).tofile(tmp_path / "val.bin")
    elif case == "foreign_meta":
        with (tmp_path / "meta.pkl").open("wb") as file:
            pickle.dump(OrderedDict(vocab_size=50), file)


@pytest.mark.parametrize("case, given, key, message", [
    ("missing", {}, "data.path", "is not a folder"),
    ("no_val", {}, "data.path", "no val.bin in"),
    ("odd_bytes", {}, "data.dtype", "holds 10001 bytes, not a whole number of uint16 tokens"),
    ("fine", {"dtype": "uint32"}, "data.dtype", "read as uint32 holds token id"),
    ("no_vocab", {}, "data.vocab_size", "has no meta.pkl with a vocab_size: set data.vocab_size"),
    ("fine", {"vocab_size": 20}, "data.vocab_size", "20 is below the vocab_size=50 of"),
    ("short", {}, "model.block_size", "holds 16 tokens, too few for one window of block_size=16"),
    ("foreign_meta", {}, "data.path", "names collections.OrderedDict; only plain dicts"),
    ("fine", {"tokenizer": "/nowhere/tokenizer.json"}, "data.tokenizer", "no file at /nowhere/tokenizer.json"),
])
def test_what_cannot_be_read_is_one_line_naming_its_key(tmp_path, case, given, key, message):
    folder = tmp_path / "data"
    if case != "missing":
        damaged(folder, case)
    with pytest.raises(ConfigError) as error:
        build(folder, **given)
    assert error.value.key == key and message in str(error.value) and "\n" not in str(error.value)


def test_a_token_past_the_vocabulary_mid_file_is_a_data_error_naming_the_window_and_file(tmp_path):
    train, _ = write_tokens(tmp_path, train=200_000)
    train[150_000] = 60  # past the first 65536 tokens checked before training
    train.tofile(tmp_path / "train.bin")
    epoch = build(tmp_path, windows_per_epoch=200_000).train_epoch(1000, seed=0, epoch=0)
    with pytest.raises(DataError) as error:
        for i in range(len(epoch)):
            starts = epoch.starts(i)
            epoch[i]
    (start,) = error.value.indices
    assert start in starts and start <= 150_000 <= start + BLOCK
    assert error.value.split == "train" and error.value.path == str(tmp_path / "train.bin")
    assert "holds token id 60, outside the vocabulary 0..49" in str(error.value)


def test_a_file_cut_short_mid_run_is_a_data_error_naming_it(tmp_path):
    write_tokens(tmp_path)
    data = build(tmp_path)
    with (tmp_path / "val.bin").open("r+b") as file:
        file.truncate(100 * 2)  # 100 tokens left of 700
    with pytest.raises(DataError) as error:
        list(data.val_batches(8))
    assert error.value.split == "val" and error.value.indices == (96,) and error.value.path == str(tmp_path / "val.bin")
    # windows of 17 tokens at offsets 0, 16, ...: the one at 96 is the first the file no longer holds
    assert str(error.value) == (f"val item 96 ({tmp_path / 'val.bin'}): the file ends 4 tokens after this offset, "
                                "not 17: did it change during the run?")
