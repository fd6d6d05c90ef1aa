"""``data=hf_dataset``: Hugging Face ``datasets`` on local files, a tokenizer trained here with
``tokenizers``, map-style and streamed, through the real CLI and the real libraries (nothing is
downloaded). The stream's exact resume is the point of most of it: stopped twice mid-epoch, a run
must train on the very token ids of the run that never stopped (datasets' own buffered shuffle
does not: datasets#7901, #8408)."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
import torch

from tests.conftest import QUIET, compose_config, run_cli
from tests.test_schedules import seed000_get_lr
from trainer.app.run import train
from trainer.data import build_dataset
from trainer.data.hf_dataset import PARAMS, HFData, hf_dataset, load_tokenizer
from trainer.data.stream import StreamFormat, StreamReader, StreamState, draw
from trainer.errors import ConfigError, DataError, Preempted
from trainer.params import defaults
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.sample import generate, load_model
from trainer.schedules.curve import read_lr_csv
from trainer.training.step import TrainStep

datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

WORDS = "the cat dog sat ran on a mat log big small red blue green fast slow".split()
SPECIAL = {"pad_token": "[PAD]", "eos_token": "<eos>"}
#: A tiny GPT-2 from a config: vocab_size comes from the tokenizer (data.num_classes).
GPT2 = ["model=hf", "loss=model", "model.config={model_type:gpt2,n_layer:1,n_head:2,n_embd:16,n_positions:32,"
        "bos_token_id:2,eos_token_id:2,resid_pdrop:0.0,embd_pdrop:0.0,attn_pdrop:0.0}"]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Local files of every kind the tests read: JSON Lines with string labels (train 96 rows,
    validation 24), three text files of 40 lines (a stream's shards), a WordLevel tokenizer
    trained on them (``tokenizer.json``) and the same as a transformers folder (``tokenizer/``)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for name, rows in (("train", 96), ("val", 24)):
        with open(root / f"{name}.jsonl", "w") as f:
            for _ in range(rows):
                text = sentence(rng)
                f.write(json.dumps({"text": text, "label": "cat" if "cat" in text.split() else "none"}) + "\n")
    for shard in range(3):
        (root / f"shard-{shard}.txt").write_text("\n".join(sentence(rng) for _ in range(40)) + "\n")
    (root / "val.txt").write_text("\n".join(sentence(rng) for _ in range(12)) + "\n")
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    model.train_from_iterator(WORDS, tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "<eos>"]))
    model.save(str(root / "tokenizer.json"))
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer.json"), **SPECIAL).save_pretrained(
        root / "tokenizer")
    return root


def settings(corpus, **given):
    """``hf_dataset``'s keyword arguments: the declared defaults, the corpus's JSON Lines and tokenizer."""
    return {**defaults(PARAMS), "files": {"train": str(corpus / "train.jsonl"), "validation": str(corpus / "val.jsonl")},
            "tokenizer": str(corpus / "tokenizer"), "cache_dir": str(corpus / "cache"), "num_workers": 0, **given}


# --- tokenizing: ids as the tokenizers library gives them ------------------------------------------------


def test_both_tokenizer_sources_give_the_tokenizers_librarys_ids_and_names(corpus):
    reference = tokenizers.Tokenizer.from_file(str(corpus / "tokenizer.json"))
    text = "the big cat sat on a mat"
    folder = load_tokenizer(str(corpus / "tokenizer"), None)
    single = load_tokenizer(str(corpus / "tokenizer.json"), SPECIAL)
    for tokenizer in (folder, single):
        assert tokenizer(text)["input_ids"] == reference.encode(text).ids
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 2)
    assert load_tokenizer(str(corpus / "tokenizer.json"), None).eos_token_id is None  # a bare tokenizer.json names none


def test_map_style_examples_are_the_rows_tokenized_with_their_labels_by_sorted_name(corpus):
    data = hf_dataset(**settings(corpus, label_column="label", max_length=5))
    reference = tokenizers.Tokenizer.from_file(str(corpus / "tokenizer.json"))
    rows = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    assert data.num_classes == 2 and data.num_train == 96 and len(data.val) == 24
    for k in (0, 1, 95):
        item = data.train[k]
        assert item["input_ids"] == reference.encode(rows[k]["text"]).ids[:5]  # cut to max_length, no eos
        assert item["labels"] == ["cat", "none"].index(rows[k]["label"])


def test_packing_ends_each_document_with_eos_and_cuts_the_whole_into_blocks(corpus):
    data = hf_dataset(**settings(corpus, block_size=8))
    reference = tokenizers.Tokenizer.from_file(str(corpus / "tokenizer.json"))
    texts = [json.loads(line)["text"] for line in (corpus / "train.jsonl").read_text().splitlines()]
    tokens = [t for text in texts for t in [*reference.encode(text).ids, 2]]
    assert data.num_train == len(tokens) // 8
    assert torch.equal(data.train.blocks.flatten(), torch.tensor(tokens[: len(tokens) // 8 * 8]))
    assert data.num_classes == len(load_tokenizer(str(corpus / "tokenizer"), None))  # the vocabulary


def test_a_validation_fraction_takes_the_same_rows_whatever_the_seed_and_none_twice(corpus):
    given = settings(corpus, files={"train": str(corpus / "train.jsonl")}, val_fraction=0.25)
    data = hf_dataset(**given)
    assert (len(data.train), len(data.val)) == (72, 24)
    assert sorted(data.train.indices + data.val.indices) == list(range(96))
    assert hf_dataset(**given).val.indices == data.val.indices


def test_a_save_to_disk_folder_gives_its_splits_and_classlabel_names(corpus, tmp_path):
    rows = datasets.Dataset.from_json(str(corpus / "train.jsonl"), cache_dir=str(tmp_path / "cache"))
    rows = rows.class_encode_column("label")
    datasets.DatasetDict({"train": rows, "test": rows.select(range(8))}).save_to_disk(str(tmp_path / "disk"))
    for streaming in (False, True):
        data = hf_dataset(**settings(corpus, files=None, from_disk=str(tmp_path / "disk"), val_split="test",
                                     label_column="label", streaming=streaming))
        assert data.num_classes == 2 and len(data.val) == 8 and data.num_train == 96
        assert data.first_batch(4)["labels"].tolist() == rows.select(range(4))["label"]


# --- the stream: every row once a pass, and a state that resumes it exactly -----------------------------


def shard_stream(corpus, *, buffer_size: int, block_size: int | None, batch_size: int = 3) -> StreamFormat:
    data = hf_dataset(**settings(corpus, files={"train": str(corpus / "shard-*.txt")}, val_split=None,
                                 streaming=True, shuffle_buffer=buffer_size, block_size=block_size))
    return data.stream.make_format(batch_size)


def test_a_shuffled_pass_reads_every_row_once_in_an_order_drawn_from_the_seed(corpus):
    form = shard_stream(corpus, buffer_size=8, block_size=None)
    lines = [line for shard in range(3) for line in (corpus / f"shard-{shard}.txt").read_text().splitlines()]

    def one_pass(seed: int) -> list[str]:
        reader = StreamReader(form, seed=seed, rank=0, world_size=1, state=StreamState())
        return [reader._next_row()[1]["text"] for _ in range(len(lines))]

    first = one_pass(seed=0)
    assert sorted(first) == sorted(lines) and first != lines
    assert one_pass(seed=0) == first and one_pass(seed=1) != first
    assert [draw(0, 0, 0, k, 8) for k in range(4)] == [draw(0, 0, 0, k, 8) for k in range(4)]


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("block_size", [None, 8])
def test_a_reader_made_from_any_saved_state_reads_on_exactly(corpus, world_size, block_size):
    """Across the pass boundary (120 rows, or about 90 blocks of 8), from every position: the
    source's state, the shuffle buffer, its draws and the packing carry together."""
    form = shard_stream(corpus, buffer_size=8, block_size=block_size)
    for rank in range(world_size):
        straight = StreamReader(form, seed=3, rank=rank, world_size=world_size, state=StreamState())
        expected = [straight.next_batch()["input_ids"] for _ in range(60 // world_size)]
        reader = StreamReader(form, seed=3, rank=rank, world_size=world_size, state=StreamState())
        for k, batch in enumerate(expected):
            if k % 7 == 3:  # stop here, and resume from the saved state (weights_only, as a checkpoint)
                state = StreamState.from_dict(roundtrip(reader.snapshot().to_dict()))
                reader = StreamReader(form, seed=3, rank=rank, world_size=world_size, state=state)
            assert torch.equal(reader.next_batch()["input_ids"], batch), (rank, k)
        assert reader.state.pass_index >= 1  # the stream went on into its second pass


def roundtrip(state: dict) -> dict:
    """``state`` through ``torch.save`` and a ``weights_only`` load, as a checkpoint keeps it."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_datasets_own_buffered_shuffle_does_not_resume_exactly(corpus):
    """Why the stream keeps its own buffer: datasets' restarts empty on resume. When this fails,
    datasets resumes its shuffle exactly, and ``trainer.data.stream``'s buffer may give way to it."""
    def shuffled():
        rows = datasets.load_dataset("text", data_files=[str(corpus / "shard-0.txt")], split="train", streaming=True)
        return rows.shuffle(seed=0, buffer_size=8)

    rows = shuffled()
    read = iter(rows)
    first = [next(read)["text"] for _ in range(12)]
    state, rest = rows.state_dict(), [row["text"] for row in read]
    resumed = shuffled()
    resumed.load_state_dict(state)
    assert sorted(first + rest) == sorted((corpus / "shard-0.txt").read_text().splitlines())
    assert [row["text"] for row in resumed] != rest


# --- whole runs: the stream resumed twice trains on the same tokens ---------------------------------------


def record_and_stop(monkeypatch, seen: list, stop_at: int | None) -> None:
    """Record each update's micro-batches' input_ids; deliver a real SIGTERM during update ``stop_at - 1``."""
    original = TrainStep.__call__

    def call(self, micro_batches, update):
        seen.append([batch["input_ids"].clone() for batch in micro_batches])
        if stop_at is not None and update == stop_at - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, micro_batches, update)

    monkeypatch.setattr(TrainStep, "__call__", call)


RUNS = {
    # packed blocks of 16 from a shuffled stream of three text files: 24 blocks an epoch, ~60 a pass
    "stream_packed": ["data.streaming=true", "data.files={{train:'{c}/shard-*.txt',validation:{c}/val.txt}}",
                      "data.block_size=16", "data.shuffle_buffer=8", "data.stream_examples=24", "data.batch_size=4"],
    # padded rows of a stream, two micro-batches per update: 32 rows an epoch, 120 a pass
    "stream_padded": ["data.streaming=true", "data.files={{train:'{c}/shard-*.txt',validation:{c}/val.txt}}",
                      "data.shuffle_buffer=16", "data.stream_examples=32", "data.batch_size=2",
                      "trainer.accumulate_grad_batches=2"],
    # map-style: our sampler's order, DataLoader workers
    "map_padded": ["data.files={{train:{c}/train.jsonl,validation:{c}/val.jsonl}}", "data.batch_size=8",
                   "data.num_workers=1"],
}


@pytest.mark.parametrize("case", sorted(RUNS))
def test_stopped_twice_and_resumed_a_run_trains_on_the_same_tokens_as_one_never_stopped(
    corpus, tmp_path, monkeypatch, case
):
    overrides = [*QUIET, *GPT2, "data=hf_dataset", f"data.tokenizer={corpus}/tokenizer",
                 f"data.cache_dir={tmp_path}/cache", "trainer.max_epochs=4", "schedule=cosine", "optimizer.lr=0.01",
                 *(o.format(c=corpus) for o in RUNS[case])]
    straight_seen, resumed_seen = [], []
    with monkeypatch.context() as patch:
        record_and_stop(patch, straight_seen, None)
        train(compose_config(*overrides, base=[]), tmp_path / "straight")
    for stop_at in (5, 14):  # mid-epoch both times
        with monkeypatch.context() as patch, pytest.raises(Preempted):
            record_and_stop(patch, resumed_seen, stop_at)
            train(compose_config(*overrides, "trainer.resume=auto", base=[]), tmp_path / "resumed")
    with monkeypatch.context() as patch:
        record_and_stop(patch, resumed_seen, None)
        train(compose_config(*overrides, "trainer.resume=auto", base=[]), tmp_path / "resumed")

    assert len(straight_seen) == len(resumed_seen) > 14
    for update, (a, b) in enumerate(zip(straight_seen, resumed_seen)):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), update
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for tag in ("train/loss", "val/loss"):
        assert read_scalars(tmp_path / "straight")[tag] == read_scalars(tmp_path / "resumed")[tag], tag


# --- through the CLI ------------------------------------------------------------------------------------


def test_a_causal_lm_trains_on_padded_rows_and_its_run_keeps_the_tokenizer(corpus, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("trainer", [*QUIET, *GPT2, "data=hf_dataset", f"data.files={{train:{corpus}/train.jsonl,validation:"
                        f"{corpus}/val.jsonl}}", f"data.tokenizer={corpus}/tokenizer.json",
                        "data.special_tokens={pad_token:'[PAD]',eos_token:'<eos>'}", f"data.cache_dir={tmp_path}",
                        "data.batch_size=8", "trainer.max_epochs=2", "optimizer.lr=0.01", f"hydra.run.dir={run_dir}"])
    losses = [v for _, v in read_scalars(run_dir)["train/loss"]]
    assert len(losses) == 2 * (96 // 8) and losses[-1] < losses[0]
    saved = transformers.AutoTokenizer.from_pretrained(run_dir / "tokenizer", local_files_only=True)
    ids = saved("the big cat")["input_ids"]
    assert ids == tokenizers.Tokenizer.from_file(str(corpus / "tokenizer.json")).encode("the big cat").ids
    assert (saved.pad_token, saved.eos_token, saved.decode(ids)) == ("[PAD]", "<eos>", "the big cat")
    assert load_checkpoint(run_dir / "last.pt")["model"]["transformer.wte.weight"].shape[0] == len(saved)
    # sample decodes with that tokenizer: greedy tokens from the trained model, as its own decode gives them
    proc = run_cli("trainer.sample", [str(run_dir), "--prompt", "the big", "--tokens", "5", "--top-k", "1"])
    model, _ = load_model(run_dir)
    prompt = torch.tensor(ids[:2])
    greedy = generate(model, prompt, 5, top_k=1, vocab_size=len(saved))
    assert proc.stdout.rstrip("\n") == saved.decode(greedy.tolist()) and len(greedy) == 7


def test_text_packed_into_blocks_counts_tokens_for_a_token_schedule_and_budget(corpus, tmp_path):
    """Blocks of 16 tokens, 4 per update: 64 tokens per update; 600 tokens take the 10 updates that first reach them."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [*QUIET, *GPT2, "data=hf_dataset", f"data.tokenizer={corpus}/tokenizer",
                        f"data.files={{train:'{corpus}/shard-*.txt',validation:{corpus}/val.txt}}", "data.block_size=16",
                        "data.batch_size=4", f"data.cache_dir={tmp_path}/cache", "schedule=warmup_cosine",
                        "schedule.interval=token", "schedule.warmup_steps=100", "schedule.min_lr=0", "optimizer.lr=0.01",
                        "trainer.max_tokens=600", f"hydra.run.dir={run_dir}"])
    rows = read_lr_csv(run_dir / "lr.csv")
    assert [r["t"] for r in rows] == [64 * u for u in range(10)]
    assert [r["lr/decay"] for r in rows] == pytest.approx([seed000_get_lr(64 * u, 100, 640, 0.01, 0.0) for u in range(10)],
                                                          rel=1e-12, abs=1e-15)
    assert [v for _, v in read_scalars(run_dir)["train/tokens"]] == [64 * (u + 1) for u in range(10)]


def test_a_bert_classifier_trains_on_a_label_column(corpus, tmp_path):
    run_dir = tmp_path / "run"
    vocab = len(load_tokenizer(str(corpus / "tokenizer"), None))
    run_cli("trainer", [*QUIET, "model=hf", "loss=model", "model.task=sequence_classification",
                        f"model.config={{model_type:bert,hidden_size:32,num_hidden_layers:1,num_attention_heads:2,"
                        f"intermediate_size:64,max_position_embeddings:32,vocab_size:{vocab}}}",
                        "data=hf_dataset", f"data.files={{train:{corpus}/train.jsonl,validation:{corpus}/val.jsonl}}",
                        f"data.tokenizer={corpus}/tokenizer", "data.label_column=label", f"data.cache_dir={tmp_path}",
                        "data.max_length=16", "data.batch_size=8", "trainer.max_epochs=3", "optimizer.lr=0.003",
                        f"hydra.run.dir={run_dir}"])
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["val/acc"] <= 1 and metrics["val/loss"] < 2
    assert load_checkpoint(run_dir / "last.pt")["model"]["classifier.bias"].shape == (2,)  # "cat", "none"


def test_a_stream_resumed_at_another_world_size_is_refused_in_one_line(corpus, tmp_path):
    from tests.test_distributed import torchrun

    run_dir = tmp_path / "run"
    args = [*QUIET, *GPT2, "data=hf_dataset", "data.streaming=true", "data.shuffle_buffer=0",
            f"data.files={{train:'{corpus}/shard-*.txt',validation:{corpus}/val.txt}}", "data.stream_examples=24",
            f"data.tokenizer={corpus}/tokenizer", f"data.cache_dir={tmp_path}", "data.batch_size=4",
            "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    proc = torchrun(*args, "trainer.strategy=ddp")
    assert proc.returncode == 0, proc.stderr
    ranks = load_checkpoint(run_dir / "last.pt")["controls"]["data_stream"]["ranks"]
    # 3 files over 2 ranks: each reads every other row, in order; 3 updates of 4 rows each
    assert [state["rows"] for state in ranks] == [12, 12] and [state["consumed"] for state in ranks] == [12, 12]
    # The same global batch of 8 in one process: only the stream's world size stands in the way.
    proc = run_cli("trainer", [*args, "data.batch_size=8", "trainer.resume=auto"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: trainer.resume: ")
    assert "stream was read by 2 ranks" in proc.stderr and "resume with 2, not 1" in proc.stderr


# --- refusals: one line naming the key, before anything is written ---------------------------------------


@pytest.mark.parametrize(("given", "key", "words"), [
    ({"files": {"train": "/nowhere/*.jsonl"}}, "data.files.train", "no file matches"),
    ({"tokenizer": "/nowhere/tok"}, "data.tokenizer", "does not exist"),
    ({"tokenizer": None}, "data.tokenizer", "missing"),
    ({"text_column": "body"}, "data.text_column", "no column 'body' in the train split (it has text, label)"),
    ({"label_column": "stars"}, "data.label_column", "no column 'stars'"),
    ({"val_split": "test"}, "data.val_split", "no split 'test' in the data (it has train, validation)"),
    ({"val_fraction": 0.1}, "data.val_fraction", "has a 'validation' split already"),
    ({"streaming": True, "val_fraction": 0.1, "val_split": None}, "data.val_fraction", "no length"),
    ({"streaming": True, "label_column": "label"}, "data.label_column", "holds strings"),
    ({"streaming": True, "text_column": "body"}, "data.text_column", "no column 'body'"),
    ({"block_size": 8, "label_column": "label"}, "data.block_size", "packing joins examples"),
    ({"append_eos": True, "tokenizer": "{c}/tokenizer.json"}, "data.append_eos", "no eos token"),
    ({"format": "csv"}, "data.files", "cannot read the files as csv"),
])
def test_bad_settings_are_one_line_naming_the_key(corpus, given, key, words):
    given = {k: v.format(c=corpus) if isinstance(v, str) else v for k, v in given.items()}
    with pytest.raises(ConfigError) as error:
        hf_dataset(**settings(corpus, **given))
    assert error.value.key == key and words in str(error.value) and "\n" not in str(error.value)


def test_a_batch_ramp_over_a_stream_is_refused_in_one_line_before_anything_is_written(corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*QUIET, *GPT2, "data=hf_dataset", f"data.files={{train:{corpus}/train.jsonl}}",
                               "data.val_split=null", f"data.tokenizer={corpus}/tokenizer", "data.streaming=true",
                               "schedule.interval=sample", "trainer.batch_ramp.start=0.5", "trainer.batch_ramp.length=16",
                               f"data.cache_dir={tmp_path}/cache", f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 2 and not run_dir.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("error: trainer.batch_ramp: a streamed split")


def test_the_cli_refuses_an_unknown_column_with_exit_2_and_writes_nothing(corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*QUIET, *GPT2, "data=hf_dataset", f"data.files={{train:{corpus}/train.jsonl}}",
                               "data.val_split=null", f"data.tokenizer={corpus}/tokenizer", "data.text_column=body",
                               f"data.cache_dir={tmp_path}/cache", f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 2 and not run_dir.exists()
    assert proc.stderr.strip().splitlines()[-1] == ("error: data.text_column: no column 'body' in the train split "
                                                    "(it has text, label)")


@pytest.mark.parametrize(("content", "key", "words"), [
    ('{"text": null}\n{"text": "a cat"}\n', "data.text_column", "train item 0: 'text' holds a NoneType, not a string"),
    ('{"text": "a cat"\n', "data.files", "datasets cannot read the train split"),
])
def test_a_streams_first_row_that_cannot_be_used_is_refused_before_training(corpus, tmp_path, content, key, words):
    (tmp_path / "rows.jsonl").write_text(content)
    with pytest.raises(ConfigError) as error:
        hf_dataset(**settings(corpus, files={"train": str(tmp_path / "rows.jsonl")}, val_split=None, streaming=True))
    assert error.value.key == key and words in str(error.value) and "\n" not in str(error.value)


def test_a_row_that_cannot_be_used_mid_stream_is_named_in_one_line(corpus, tmp_path):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a cat", "a dog", None]))
    data = hf_dataset(**settings(corpus, files={"train": str(tmp_path / "rows.jsonl")}, val_split=None,
                                 streaming=True, shuffle_buffer=0))
    reader = StreamReader(data.stream.make_format(1), seed=0, rank=0, world_size=1, state=StreamState())
    reader.next_batch(), reader.next_batch()
    with pytest.raises(DataError) as error:
        reader.next_batch()
    assert str(error.value) == "train item 2: 'text' holds a NoneType, not a string (row 2 of pass 0 of rank 0's stream)"


def test_the_shipped_yaml_builds_through_build_dataset(corpus, tmp_path):
    cfg = compose_config("data=hf_dataset", f"data.tokenizer={corpus}/tokenizer", f"data.cache_dir={tmp_path}",
                         f"data.files={{train:{corpus}/train.jsonl,validation:{corpus}/val.jsonl}}",
                         "data.num_workers=2", base=[])
    data = build_dataset(cfg.data, seed=0)
    assert isinstance(data, HFData) and data.num_train == 96 and data.num_workers == 2  # the loop's key reaches it
    assert data.first_batch(2)["input_ids"].shape[0] == 2
