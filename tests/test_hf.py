"""Hugging Face models as users bring them: batches of named tensors, ``model=hf``, LoRA, and
``trainer.fit`` with a dataset of dicts; tiny models from configs (transformers and peft are real,
nothing is downloaded)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

import trainer
from tests.conftest import QUIET, REPO, compose_config
from tests.userpkg.text import Sentences
from trainer.data import build_dataset
from trainer.data.collate import Packed, Pad
from trainer.data.map_style import map_dataset
from trainer.data.named import call_model, logits_of
from trainer.errors import ConfigError
from trainer.models import build_model
from trainer.models.hf import shifts_labels
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.training.evaluate import evaluate
from trainer.training.loss import CrossEntropy, ModelLoss, bind_loss
from trainer.training.precision import resolve_precision

USER_CONF = REPO / "tests" / "userpkg" / "conf"
FP32 = resolve_precision("fp32", torch.device("cpu"))
#: tests/userpkg/conf/model/tiny_gpt2.yaml's config, for models built here.
TINY_GPT2 = dict(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=32, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=32, vocab_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def run_user_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m trainer --config-dir tests/userpkg/conf ...``, the user's package importable as ``userpkg``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "trainer", "--config-dir", str(USER_CONF), *QUIET, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def last_line(stderr: str) -> str:
    """The trainer's own last line (transformers may log warnings of its own before it)."""
    return stderr.strip().splitlines()[-1]


# --- the bug: a user loss reading .logits passed the check, then died at the first validation ----------


def test_a_user_loss_that_reads_logits_trains_and_validates(tmp_path):
    """Issue 24: GPT-2 with ``loss._target_`` reading ``outputs.logits`` trained a whole epoch, then
    died in validation's ``outputs.float()`` (a traceback, exit 1, no last.pt)."""
    run_dir = tmp_path / "run"
    proc = run_user_cli("model=tiny_gpt2", "data=sentences", "loss=logits", "trainer.max_epochs=2",
                        f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    val = read_scalars(run_dir)["val/loss"]
    assert [step for step, _ in val] == [8, 16]  # 64 sentences / batch 8: both epochs validated
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["val/loss"] == pytest.approx(val[-1][1], rel=1e-6) and metrics["val/loss"] < 3.3  # ln 32 = 3.47
    assert 0 <= metrics["val/acc"] <= 1 and (run_dir / "last.pt").is_file()


def test_the_check_before_training_runs_the_validation_path_too(tmp_path):
    """A loss that scores in training but not as validation runs it (without autograd) is one line
    and exit 2 before anything is written, not a traceback after an epoch."""
    run_dir = tmp_path / "run"
    proc = run_user_cli("model=tiny_gpt2", "data=sentences", "loss=smoothness", "trainer.max_epochs=1",
                        f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr) == ("error: loss: validation cannot score the model's outputs: RuntimeError: "
                                      "element 0 of tensors does not require grad and does not have a grad_fn")
    assert "Traceback" not in proc.stderr and not run_dir.exists()


# --- batches of named tensors: outputs of every kind, labels as Hugging Face shifts them ----------------


def test_our_cross_entropy_on_a_causal_lm_is_the_models_own_loss():
    """Hugging Face's GPT-2 given ``labels`` shifts them inside; ours, bound to the model, shifts alike."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY_GPT2)).eval()
    batch = Pad(pad_id=5)([{"input_ids": [1, 2, 3, 4, 5, 6]}, {"input_ids": [7, 8, 9]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 5, 5, 5]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, -100, -100, -100]]
    outputs = model(**batch)
    loss_fn = bind_loss(CrossEntropy(), model, named=True)
    assert loss_fn.shift_labels and shifts_labels(model)
    torch.testing.assert_close(loss_fn(outputs, batch["labels"]), outputs.loss, rtol=1e-6, atol=0)
    assert int(loss_fn.counted(batch["labels"])) == 5 + 2  # each row's first label is never a target
    torch.testing.assert_close(loss_fn.summed(outputs, batch["labels"]), outputs.loss * 7, rtol=1e-6, atol=0)
    model_loss = bind_loss(ModelLoss(), model, named=True)
    assert model_loss.summed(outputs, batch["labels"]) == outputs.loss * 7


def test_a_classifier_is_not_shifted_and_a_plain_module_is_not_a_causal_lm():
    model = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=3))
    assert not shifts_labels(model) and not shifts_labels(nn.Linear(2, 2))
    assert not bind_loss(CrossEntropy(), model, named=True).shift_labels


def test_a_causal_lm_on_pairs_of_next_tokens_is_scored_unshifted():
    """Token data's pairs (x, y) hold the next tokens already (y[t] = x[t + 1]); only a named batch's
    labels are its inputs. Both score the same predictions: GPT-2's own loss given labels = x."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY_GPT2)).eval()
    tokens = torch.randint(0, TINY_GPT2["vocab_size"], (3, 9))
    x, y = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        own = model(input_ids=tokens, labels=tokens).loss  # shifts inside: the same 3 × 8 predictions
        pair_loss = bind_loss(CrossEntropy(), model, named=False)
        assert not pair_loss.shift_labels
        torch.testing.assert_close(pair_loss(model(x), y), own, rtol=1e-5, atol=0)
        named = {"input_ids": tokens, "labels": tokens}
        pairs, named_metrics = evaluate(model, [(x, y)], FP32), evaluate(model, [named], FP32)
    assert pairs["val/loss"] == pytest.approx(float(own), rel=1e-5)
    assert named_metrics["val/loss"] == pytest.approx(float(own), rel=1e-5)


@dataclasses.dataclass
class Out:
    logits: torch.Tensor


class Outputs(nn.Module):
    """A linear classifier returning its logits as ``kind``: a tensor, a dict or a dataclass."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.linear = kind, nn.Linear(4, 3)

    def forward(self, features: torch.Tensor):
        logits = self.linear(features)
        return {"tensor": logits, "dict": {"logits": logits}, "dataclass": Out(logits)}[self.kind]


def test_validation_reads_tensors_dicts_and_dataclasses_alike():
    torch.manual_seed(0)
    features, labels = torch.randn(10, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, -100, 2])
    scores = {}
    for kind in ("tensor", "dict", "dataclass"):
        torch.manual_seed(1)
        model = Outputs(kind)
        pairs = [(features[:6], labels[:6]), (features[6:], labels[6:])]
        named = [{"features": features[:6], "labels": labels[:6]}, {"features": features[6:], "labels": labels[6:]}]
        scores[kind] = evaluate(model, named, FP32)
        assert evaluate(model, pairs, FP32) == scores[kind]  # a pair's input is the model's one argument
        assert logits_of(call_model(model, named[0], labels=False)).shape == (6, 3)
    torch.manual_seed(1)
    reference = nn.Linear(4, 3)  # the same initial weights as each model's
    kept = labels != -100
    expected = nn.functional.cross_entropy(reference(features)[kept], labels[kept]).item()
    assert scores["tensor"] == scores["dict"] == scores["dataclass"]
    assert scores["tensor"]["val/loss"] == pytest.approx(expected, rel=1e-6)  # per scored target: 9, not 10
    assert scores["tensor"]["val/acc"] == pytest.approx(
        (reference(features).argmax(1) == labels)[kept].float().mean().item())


def test_pad_makes_labels_and_masks_and_stacks_class_labels():
    batch = Pad()([{"input_ids": [3, 4], "labels": 1}, {"input_ids": [5], "labels": 0}])
    assert {k: v.tolist() for k, v in batch.items()} == {
        "input_ids": [[3, 4], [5, 0]], "attention_mask": [[1, 1], [1, 0]], "labels": [1, 0]}
    with pytest.raises(ValueError, match="different keys"):
        Pad()([{"input_ids": [1]}, {"input_ids": [1], "token_type_ids": [0]}])


def test_packed_cuts_every_documents_tokens_into_whole_blocks():
    packed = Packed([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, [6, 7, 8, 9]], block_size=4)
    assert len(packed) == 2  # 9 tokens: two blocks of 4, the last token dropped
    assert packed[0]["input_ids"].tolist() == [1, 2, 3, 4] and packed[1]["labels"].tolist() == [5, 6, 7, 8]


# --- model=hf: from a config or a local folder; through the CLI and trainer.fit alike ------------------


def test_model_hf_loads_a_local_folder_and_never_downloads(tmp_path):
    torch.manual_seed(0)
    saved = GPT2LMHeadModel(GPT2Config(**TINY_GPT2))
    saved.save_pretrained(tmp_path / "gpt2")
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / "hf.yaml"), {"path": str(tmp_path / "gpt2")})
    model = build_model(cfg, input_shape=(8,), num_classes=None)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    missing = OmegaConf.merge(cfg, {"path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="is not a directory: give a folder save_pretrained wrote") as error:
        build_model(missing, input_shape=(8,), num_classes=None)
    assert error.value.key == "model.path"
    with pytest.raises(ConfigError, match="either model.path .* or model.config"):
        build_model(OmegaConf.merge(cfg, {"config": {"model_type": "gpt2"}}), input_shape=(8,), num_classes=None)


def fit_overrides(*extra: str) -> list[str]:
    return [*QUIET, "trainer.max_epochs=2", "data.batch_size=8", "data.num_workers=0", *extra]


def assert_same_run(cli_dir, fit_dir, fitted: dict) -> None:
    """The CLI's run and trainer.fit's: the same metrics and parameters, to the bit."""
    metrics = json.loads((cli_dir / "metrics.json").read_text())["metrics"]
    assert fitted["val/loss"] == metrics["val/loss"] and fitted["val/acc"] == metrics["val/acc"]
    cli, fit = load_checkpoint(cli_dir / "last.pt")["model"], load_checkpoint(fit_dir / "last.pt")["model"]
    assert cli.keys() == fit.keys()
    for name in cli:
        assert torch.equal(cli[name], fit[name]), name


def test_a_tiny_gpt2_trains_through_the_cli_and_through_fit_alike(tmp_path):
    proc = run_user_cli("model=tiny_gpt2", "data=sentences", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'cli'}")
    assert proc.returncode == 0, proc.stderr
    losses = [v for _, v in read_scalars(tmp_path / "cli")["train/loss"]]
    assert len(losses) == 16 and losses[-1] < losses[0]
    torch.manual_seed(0)  # what the CLI's seed=0 does before it builds the model
    random.seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY_GPT2, use_cache=False))
    fitted = trainer.fit(model, Sentences(64), Sentences(24, seed=1), run_dir=tmp_path / "fit",
                         overrides=fit_overrides())
    assert_same_run(tmp_path / "cli", tmp_path / "fit", fitted)


def test_a_tiny_bert_classifier_trains_through_the_cli_and_through_fit_alike(tmp_path):
    data = ["data=sentences", "data.num_classes=4", "+data.train.num_classes=4", "+data.val.num_classes=4"]
    proc = run_user_cli("model=tiny_bert", *data, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'cli'}")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["val/acc"] <= 1
    torch.manual_seed(0)
    random.seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=4))
    fitted = trainer.fit(model, Sentences(64, num_classes=4), Sentences(24, seed=1, num_classes=4),
                         run_dir=tmp_path / "fit", overrides=fit_overrides("data.num_classes=4"))
    assert_same_run(tmp_path / "cli", tmp_path / "fit", fitted)


# --- LoRA: only the adapters train -------------------------------------------------------------------


def test_lora_trains_the_adapters_and_leaves_every_other_weight_bit_for_bit(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_user_cli("model=tiny_gpt2", "data=sentences", "trainer.max_epochs=1", "optimizer.weight_decay=0.1",
                        "model.lora={r:4,alpha:8,target_modules:[c_attn]}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    trained = load_checkpoint(run_dir / "last.pt")["model"]
    cfg = OmegaConf.load(run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)  # the run's initial weights (adapters included), as it built them
    random.seed(cfg.seed)
    initial = build_model(cfg.model, input_shape=(1,), num_classes=None).state_dict()
    assert initial.keys() == trained.keys()
    adapters = [name for name in initial if "lora_" in name]
    assert len(adapters) == 2 * 2  # lora_A and lora_B of c_attn in each of the 2 blocks
    for name in initial:
        if name in adapters:
            assert not torch.equal(initial[name], trained[name]), name
        else:  # frozen: no gradient, so no step, no weight decay
            assert torch.equal(initial[name], trained[name]), name


def test_lora_wraps_any_model_and_names_a_module_it_cannot_find():
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / "mlp.yaml"),
                          {"lora": {"r": 2, "target_modules": ["1", "4"]}})  # mlp's two Linear layers
    model = build_model(cfg, input_shape=(8,), num_classes=3)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"base_model.model.{layer}.lora_{ab}.default.weight" for layer in (1, 4) for ab in "AB"]
    assert model(torch.randn(2, 8)).shape == (2, 3)
    missing = OmegaConf.merge(cfg, {"lora": {"target_modules": ["nope"]}})
    with pytest.raises(ConfigError, match="peft cannot adapt Sequential: Target modules {'nope'} not found") as error:
        build_model(missing, input_shape=(8,), num_classes=3)
    assert error.value.key == "model.lora.target_modules"


def test_data_collate_and_packing_are_targets_of_the_config():
    cfg = compose_config("data=torch_dataset", "data.num_workers=0",
                         "data.train={_target_:tests.userpkg.text.Sentences,size:8}", "data.val=null",
                         "data.collate={_target_:trainer.data.collate.Pad,pad_id:31}", base=[])
    data = build_dataset(cfg.data, seed=0)
    batch = data.first_batch(2)
    lengths = [len(Sentences(8).items[k]) for k in range(2)]
    assert batch["input_ids"].shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert batch["input_ids"][short, min(lengths):].eq(31).all() and batch["labels"][short, min(lengths):].eq(-100).all()
    packed = compose_config("data=torch_dataset", "data.num_workers=0", "data.val=null", base=[
        "data.train={_target_:trainer.data.collate.Packed,block_size:5,dataset:{_target_:tests.userpkg.text.Sentences,size:8}}"])
    data = build_dataset(packed.data, seed=0)
    assert data.num_train == sum(len(s) for s in Sentences(8).items) // 5 and data.input_shape == (5,)
    assert data.first_batch(2)["input_ids"].flatten().tolist() == sum(Sentences(8).items, [])[:10]


def test_named_labels_outside_the_classes_are_refused_before_training():
    with pytest.raises(ConfigError, match=r"^data.train: item 0's label 5 is outside 0..3") as error:
        map_dataset([{"input_ids": [1, 2], "labels": 5}], None, num_classes=4, num_workers=0, pin_memory=False)
    assert error.value.key == "data.train"
    with pytest.raises(ConfigError, match="is a mapping of named tensors but the training split's is not"):
        map_dataset([(torch.zeros(2), 1)], [{"input_ids": [1]}], num_classes=4, num_workers=0, pin_memory=False)


def flat(state: dict) -> torch.Tensor:
    return torch.cat([state[k].flatten() for k in sorted(state) if state[k].is_floating_point()])


def test_the_models_own_loss_trains_as_ours_weighted_by_tokens(tmp_path):
    """loss=model (GPT-2's outputs.loss, a mean over each micro-batch's counted tokens, times their
    count) and our cross-entropy on the logits give every update the same gradient, accumulated
    too: the same parameters up to fp32 rounding (the bound of tests/test_token_weighting.py)."""
    runs = {}
    for loss in ("cross_entropy", "model"):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(**TINY_GPT2))
        initial = flat(model.state_dict()).clone()
        trainer.fit(model, Sentences(32), Sentences(8, seed=1), run_dir=tmp_path / loss,
                    overrides=fit_overrides(f"loss={loss}", "trainer.max_epochs=1", "trainer.accumulate_grad_batches=2",
                                            "data.batch_size=4"))
        runs[loss] = flat(load_checkpoint(tmp_path / loss / "last.pt")["model"])
    ours, own = runs["cross_entropy"], runs["model"]
    assert (ours - initial).norm() / ours.norm() > 1e-3  # it trained
    assert (ours - own).norm() / ours.norm() <= 1e-6


def test_label_smoothing_asked_of_the_models_own_loss_is_refused_not_dropped():
    from trainer.app.build import build_loss

    with pytest.raises(ConfigError) as error:
        build_loss(compose_config("loss=model", "trainer.label_smoothing=0.1"))
    assert error.value.key == "trainer.label_smoothing" and "takes no label_smoothing" in str(error.value)
    assert isinstance(build_loss(compose_config("loss=model")), ModelLoss)


def test_the_models_own_loss_of_a_batch_with_no_counted_label_adds_nothing():
    """Hugging Face's mean over no counted label is NaN (a rank's empty last validation batch, a
    prompt cut before its answer); summed, it must add 0, and the batches around it count as ever."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY_GPT2)).eval()
    loss_fn = bind_loss(ModelLoss(), model, named=True)
    tokens = torch.randint(0, TINY_GPT2["vocab_size"], (2, 6))
    with torch.no_grad():
        empty = model(input_ids=tokens, labels=torch.full_like(tokens, -100))
        assert torch.isnan(empty.loss)  # what Hugging Face gives
        assert loss_fn.summed(empty, torch.full_like(tokens, -100)) == 0
        full = model(input_ids=tokens, labels=tokens)
        torch.testing.assert_close(loss_fn.summed(full, tokens), full.loss * 10, rtol=1e-6, atol=0)
