"""Fine-tuning from weights: init_from, gradual unfreezing, layer-wise LR decay, parameter-group rules.

Expectations come from the source run's own tensors, torch's optimizer semantics (an LR of 0
leaves a parameter as it was; a parameter without gradient gets no state) and scales worked out
by hand from each model's layout.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import QUIET, TINY, compose_config, run_cli
from tests.test_resume import straight_and_resumed
from trainer.app.run import train
from trainer.app.validate import validate
from trainer.errors import ConfigError
from trainer.models.gpt import build_gpt
from trainer.models.resnet import build_resnet18, build_resnet20
from trainer.optim.groups import GROUPS_FILE, parameter_groups
from trainer.optim.unfreeze import check_unfreeze_strategy
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars

# A warmup from 0: update 0 runs at LR 0, so it leaves the loaded weights exactly as they were.
WARMUP = ["schedule=warmup_cosine", "schedule.warmup_steps=4", "schedule.total_steps=8", "trainer.clip_grad_norm=null"]


@pytest.fixture
def source(tmp_path):
    """A finished 8-update run of the tiny job: its directory."""
    run_dir = tmp_path / "source"
    train(compose_config("schedule=cosine", "trainer.max_epochs=1"), run_dir)
    return run_dir


@pytest.mark.parametrize("form", ["checkpoint", "state_dict"])
def test_init_from_reproduces_the_source_weights_and_starts_the_optimizer_fresh(tmp_path, source, form):
    weights = load_checkpoint(source / "last.pt")["model"]
    path = source / "last.pt"
    if form == "state_dict":
        path = tmp_path / "weights.pt"
        torch.save(weights, path)
    run_dir = tmp_path / "tuned"
    train(compose_config(*WARMUP, f"trainer.init_from={path}", "trainer.max_steps=1"), run_dir)
    tuned = load_checkpoint(run_dir / "last.pt")
    assert tuned["update"] == 1  # the schedule counts from 0, not from the source's 8
    for name, tensor in weights.items():
        assert torch.equal(tuned["model"][name], tensor), name
    # One AdamW step since the start: the source's moments (8 steps) were not carried over.
    assert [float(s["step"]) for s in tuned["optimizer"]["state"].values()] == [1.0] * len(weights)
    assert read_scalars(run_dir)["train/lr"] == [(0, 0.0)]


def test_a_strict_mismatch_is_one_clear_error_before_anything_is_written(tmp_path, source):
    run_dir = tmp_path / "tuned"
    proc = run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", "schedule=cosine", "model.hidden_sizes=[32]",
                               f"trainer.init_from={source / 'last.pt'}"], check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer.init_from: "), proc.stderr
    assert "does not fit the model: 3 of another shape (1.weight [128, 16] vs [32, 16], 1.bias [128] vs [32], "\
           "4.weight [4, 128] vs [4, 32]); " in lines[0]
    assert "trainer.init_strict=false" in lines[0]
    assert not run_dir.exists()


def test_a_file_that_is_no_weights_is_refused(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"lr": 0.1}, path)
    with pytest.raises(ConfigError, match="holds neither a checkpoint of ours nor a state_dict"):
        train(compose_config("schedule=cosine", f"trainer.init_from={path}"), tmp_path / "run")
    path.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="^trainer.init_from: .* is not a checkpoint of ours"):
        train(compose_config("schedule=cosine", f"trainer.init_from={path}"), tmp_path / "run")


def test_non_strict_loads_all_but_a_new_head_and_prints_the_table(tmp_path, source, capsys):
    weights = load_checkpoint(source / "last.pt")["model"]
    path = tmp_path / "weights.pt"
    torch.save({**weights, "extra.weight": torch.zeros(3)}, path)
    run_dir = tmp_path / "tuned"
    train(compose_config(*WARMUP, "data.num_classes=3", f"trainer.init_from={path}", "trainer.init_strict=false",
                         "trainer.max_steps=1"), run_dir)
    out = capsys.readouterr().out
    assert f"init_from {path}: loaded 2 of the model's 4 tensors; not loaded:" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and "shape" not in line[:6]]
    assert ["4.weight", "shape", "mismatch", "[4,", "128]", "[3,", "128]"] in rows
    assert ["4.bias", "shape", "mismatch", "[4]", "[3]"] in rows
    assert ["extra.weight", "unexpected", "[3]", "-"] in rows
    tuned = load_checkpoint(run_dir / "last.pt")["model"]
    assert torch.equal(tuned["1.weight"], weights["1.weight"]) and torch.equal(tuned["1.bias"], weights["1.bias"])
    assert tuned["4.weight"].shape == (3, 128)


def test_init_from_and_an_explicit_resume_are_refused_together(tmp_path):
    cfg = compose_config("trainer.init_from=a.pt", "trainer.resume=b.pt")
    with pytest.raises(ConfigError, match="^trainer.init_from: trainer.resume=b.pt continues that run"):
        validate(cfg)
    validate(compose_config("trainer.init_from=a.pt", "trainer.resume=auto"))  # a requeued fine-tune


def test_resume_auto_with_init_from_resumes_its_own_checkpoint(tmp_path, source):
    run_dir = tmp_path / "tuned"
    run = ["schedule=cosine", f"trainer.init_from={source / 'last.pt'}", "trainer.resume=auto"]
    train(compose_config(*run, "trainer.max_epochs=1", "schedule.total_steps=16"), run_dir)
    first = load_checkpoint(run_dir / "last.pt")
    train(compose_config(*run, "trainer.max_epochs=2", "schedule.total_steps=16"), run_dir)
    resumed = load_checkpoint(run_dir / "last.pt")
    assert resumed["update"] == 16 and float(resumed["optimizer"]["state"][0]["step"]) == 16.0
    assert not torch.equal(resumed["model"]["1.weight"], first["model"]["1.weight"])


# --- gradual unfreezing ---------------------------------------------------------------------------

@pytest.mark.parametrize("stage", [["trainer.unfreeze=[{at: 8, modules: ['1'], lr_scale: 0.5}]"],
                                   ["trainer.unfreeze=[{at: 1, modules: ['1'], lr_scale: 0.5}]",
                                    "schedule.interval=epoch"]], ids=["updates", "epochs"])
def test_frozen_weights_are_bit_identical_until_their_stage_and_train_after_it(tmp_path, source, stage):
    """The MLP's first layer (module 1) frozen for epoch 0 (8 updates), from the source weights."""
    start = load_checkpoint(source / "last.pt")["model"]
    run_dir = tmp_path / "tuned"
    train(compose_config("schedule=cosine", *stage, f"trainer.init_from={source / 'last.pt'}",
                         "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=1", "trainer.keep_last_n=16"), run_dir)
    for update in range(1, 17):
        state = load_checkpoint(run_dir / f"step-{update:08d}.pt")
        for name in ("1.weight", "1.bias"):
            assert torch.equal(state["model"][name], start[name]) == (update <= 8), (update, name)
        assert not torch.equal(state["model"]["4.weight"], start["4.weight"]), update
        # Frozen: no optimizer state at all (the groups of module 1 come last: indices 2 and 3).
        assert sorted(state["optimizer"]["state"]) == ([0, 1] if update <= 8 else [0, 1, 2, 3]), update
    logs = read_scalars(run_dir)
    frozen_lr = dict(logs["train/lr/decay/unfreeze1"])
    base_lr = dict(logs["train/lr"])
    assert all(frozen_lr[u] == 0.0 for u in range(8))
    assert all(frozen_lr[u] == pytest.approx(0.5 * base_lr[u]) and frozen_lr[u] > 0 for u in range(8, 16))


@pytest.mark.parametrize("stop_after", [5, 11])  # before the stage (update 8) and after it
def test_resume_across_an_unfreeze_stage_is_exact(tmp_path, monkeypatch, stop_after):
    run = ["schedule=cosine", "trainer.unfreeze=[{at: 8, modules: ['1'], lr_scale: 0.5}]", "trainer.max_epochs=2"]
    a, b = straight_and_resumed(tmp_path, monkeypatch, run, stop_after)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, param_state in a["optimizer"]["state"].items():
        for key, value in param_state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    logs_a, logs_b = read_scalars(tmp_path / "straight"), read_scalars(tmp_path / "resumed")
    for tag in ("train/lr", "train/lr/decay/unfreeze1", "train/loss", "val/loss"):
        assert logs_a[tag] == logs_b[tag], tag


def test_a_changed_unfreeze_plan_is_refused_on_resume(tmp_path):
    run = ["schedule=cosine", "schedule.total_steps=16", "trainer.max_epochs=1"]
    train(compose_config(*run, "trainer.unfreeze=[{at: 8, modules: ['1']}]"), tmp_path)
    with pytest.raises(ConfigError, match="unfreeze: "):
        train(compose_config(*run, "trainer.unfreeze=[{at: 4, modules: ['1']}]", "trainer.max_epochs=2",
                             "trainer.resume=auto"), tmp_path)


@pytest.mark.parametrize(("override", "key", "message"), [
    ("trainer.unfreeze=[{at: -1, modules: ['1']}]", "trainer.unfreeze.0.at", "got -1; expected an integer >= 0"),
    ("trainer.unfreeze=[{modules: ['1']}]", "trainer.unfreeze.0.at", "missing; each item takes at (required)"),
    ("trainer.unfreeze=[{at: 2, modules: '1'}]", "trainer.unfreeze.0.modules", "got '1'; expected a list of strings"),
    ("trainer.unfreeze=[{at: 2, modules: ['1'], lr_sclae: 2}]", "trainer.unfreeze.0.lr_sclae",
     "did you mean lr_scale?"),
    ("trainer.unfreeze=[{at: 2, modules: ['1']}, {at: 4, modules: ['1']}]", "trainer.unfreeze.1.modules",
     "1 is already in stage 0"),
    ("optimizer.layer_order=['1']", "optimizer.layer_order", "is read only with optimizer.layer_decay"),
    ("optimizer.param_groups=[{lr_scale: 2}]", "optimizer.param_groups.0.match", "missing"),
])
def test_bad_stages_and_rules_are_one_line_naming_the_key(override, key, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override))
    assert error.value.key == key and message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["trainer.unfreeze=[{at: 2, modules: [fc]}]"], "trainer.unfreeze.0.modules",
     "fc names no parameters of this model; its top-level modules are 0, 1, 2, 3, 4"),
    (["optimizer.param_groups=[{match: 'fc.*'}]"], "optimizer.param_groups.0.match",
     "'fc.*' matches no parameter name (globs over names such as 1.weight); the model's modules are 1, 4"),
    (["optimizer.layer_decay=0.5"], "optimizer.layer_order", "Sequential has no layer order of its own"),
    (["optimizer.layer_decay=0.5", "optimizer.layer_order=['1']"], "optimizer.layer_order", "no depth for 4.weight"),
])
def test_names_the_model_lacks_are_errors_before_training(tmp_path, overrides, key, message):
    with pytest.raises(ConfigError) as error:
        train(compose_config("schedule=cosine", *overrides), tmp_path / "run")
    assert error.value.key == key and message in str(error.value), str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_unfreezing_is_refused_under_ddp_and_fsdp(strategy):
    check_unfreeze_strategy([], strategy)
    with pytest.raises(ConfigError, match=f"^trainer.unfreeze: .*not supported with trainer.strategy={strategy}"):
        check_unfreeze_strategy([{"at": 1, "modules": ["1"]}], strategy)


# --- layer-wise decay and group tables --------------------------------------------------------

def scales(groups):
    return {name: group["lr_scale"] for group in groups for name in group["param_names"]}


def assert_every_parameter_once(model, groups):
    named = [name for name, _ in model.named_parameters()]
    grouped = [name for group in groups for name in group["param_names"]]
    assert sorted(grouped) == sorted(named) and len(grouped) == len(set(grouped))
    for group in groups:  # the names are those of the tensors the group holds
        by_name = dict(model.named_parameters())
        assert all(by_name[n] is p for n, p in zip(group["param_names"], group["params"]))


def test_layer_decay_on_a_three_block_gpt():
    model = build_gpt(input_shape=(8,), num_classes=11, n_layer=3, n_head=2, n_embd=8, block_size=8, dropout=0.0)
    groups = parameter_groups(model, 0.1, layer_decay=0.75)
    expected = {}
    for name, _ in model.named_parameters():  # D = 4: embeddings 0, blocks 1..3, the final norm 4
        if name.startswith(("wte.", "wpe.")):
            expected[name] = 0.75 ** 4  # the tied lm_head's weight is wte's
        elif name.startswith("blocks."):
            expected[name] = 0.75 ** (3 - int(name.split(".")[1]))
        else:
            assert name.startswith("ln_f.")
            expected[name] = 1.0
    assert scales(groups) == pytest.approx(expected)
    assert_every_parameter_once(model, groups)
    assert groups[0]["name"] == "decay/depth4" or groups[0]["lr_scale"] == 1.0


def test_layer_decay_on_resnet20():
    model = build_resnet20(input_shape=(3, 32, 32), num_classes=10)
    groups = parameter_groups(model, 0.1, layer_decay=0.75)
    # nn.Sequential: 0 conv, 1 bn (stem, depth 0); blocks 3-5, 6-8, 9-11 (stages, 1-3); 14 fc (head, 4).
    depth = {0: 0, 1: 0, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2, 9: 3, 10: 3, 11: 3, 14: 4}
    expected = {name: 0.75 ** (4 - depth[int(name.split(".")[0])]) for name, _ in model.named_parameters()}
    assert scales(groups) == pytest.approx(expected)
    assert_every_parameter_once(model, groups)
    assert {g["name"]: g["weight_decay"] for g in groups}["no_decay/depth2"] == 0.0


def test_rules_first_match_wins_on_top_of_the_no_decay_split():
    model = build_gpt(input_shape=(8,), num_classes=11, n_layer=3, n_head=2, n_embd=8, block_size=8, dropout=0.0)
    rules = [{"match": "blocks.*.attn.*", "lr_scale": 0.5, "weight_decay": 0.3},
             {"match": "blocks.*", "lr_scale": 2.0}]
    groups = parameter_groups(model, 0.1, rules=rules)
    assert_every_parameter_once(model, groups)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay/blocks.*.attn.*"]["param_names"] == [f"blocks.{i}.attn.{p}.weight" for i in range(3)
                                                               for p in ("qkv", "proj")]
    assert by_name["decay/blocks.*.attn.*"]["weight_decay"] == 0.3 and by_name["decay/blocks.*.attn.*"]["lr_scale"] == 0.5
    assert by_name["no_decay/blocks.*"]["weight_decay"] == 0.0  # the layer norms keep the no-decay default
    assert by_name["decay/blocks.*"]["weight_decay"] == 0.1 and by_name["decay/blocks.*"]["lr_scale"] == 2.0
    assert "decay" not in by_name  # every decayed tensor is in a block (the head is tied to wte)
    assert by_name["no_decay"]["param_names"] == ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]


def test_the_group_table_adds_up_in_the_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(compose_config("schedule=cosine", "trainer.max_steps=1", "schedule.total_steps=8", "optimizer.layer_decay=0.5",
                         "optimizer.layer_order=['1','4']", "optimizer.param_groups=[{match: '*.bias', lr_scale: 3}]",
                         "trainer.unfreeze=[{at: 4, modules: ['1']}]"), run_dir)
    text = (run_dir / GROUPS_FILE).read_text()
    assert text.startswith("# Parameter groups\n\n| group | tensors | parameters | lr_scale | weight_decay | trains from")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[4:] if line]
    body, total = rows[:-1], rows[-1]
    # tiny MLP: 1.weight 128x16, 1.bias 128, 4.weight 4x128, 4.bias 4
    assert {row[0]: row[1:] for row in body} == {
        "decay/depth1": ["1", "512", "1", "0.01", "0"],
        "no_decay/depth1/*.bias": ["1", "4", "3", "0", "0"],
        "decay/depth0/unfreeze1": ["1", "2,048", "0.5", "0.01", "4"],
        "no_decay/depth0/*.bias/unfreeze1": ["1", "128", "1.5", "0", "4"],
    }
    assert total == ["total", "4", f"{128 * 16 + 128 + 4 * 128 + 4:,}", "", "", ""]
    assert sum(int(row[1]) for row in body) == 4
    out = capsys.readouterr().out
    assert "| decay/depth1 | 1 | 512 | 1 | 0.01 | 0 |" in out and "update 4 (epoch 0.5): 1 at 1x LR" in out


def test_the_seed_002_presets_give_bottom_middle_top_scales():
    cfg = compose_config("model=resnet20", "data=cifar10", "optimizer/lr_scales=resnet20_discriminative", base=QUIET)
    model = build_resnet20(input_shape=(3, 32, 32), num_classes=10)
    groups = parameter_groups(model, 0.1, lr_scales=OmegaConf.to_container(cfg.optimizer.lr_scales))
    stage = {0: "bottom", 1: "bottom", 3: "bottom", 4: "bottom", 5: "bottom", 6: "middle", 7: "middle", 8: "middle",
             9: "top", 10: "top", 11: "top", 14: "top"}
    seed_002 = {"bottom": 0.1, "middle": 0.5, "top": 1.0}
    expected = {name: seed_002[stage[int(name.split(".")[0])]] for name, _ in model.named_parameters()}
    assert scales(groups) == pytest.approx(expected)
    cfg = compose_config("model=resnet18", "optimizer/lr_scales=resnet18_discriminative", base=QUIET)
    model = build_resnet18(input_shape=(3, 32, 32), num_classes=10)
    groups = parameter_groups(model, 0.1, lr_scales=OmegaConf.to_container(cfg.optimizer.lr_scales))
    stage = {"conv1": "bottom", "bn1": "bottom", "layer1": "bottom", "layer2": "bottom", "layer3": "middle",
             "layer4": "top", "fc": "top"}
    expected = {name: seed_002[stage[name.split(".")[0]]] for name, _ in model.named_parameters()}
    assert scales(groups) == pytest.approx(expected)
