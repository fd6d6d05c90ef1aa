"""Every config composes and builds; every bad value is one ConfigError naming its key."""

from __future__ import annotations

import pytest

from tests.conftest import QUIET, REPO, compose_config
from trainer.app.build import build_for_preview
from trainer.app.validate import validate, warmup_warning
from trainer.errors import ConfigError
from trainer.plan import plan_run

# Files of schedule=chain with set phases (tests/test_chain.py checks their values).
CHAIN_PRESETS = ["flat_cosine", "nanogpt", "preset_finetune"]
SCHEDULES = sorted(p.stem for p in (REPO / "conf/schedule").glob("*.yaml")
                   if not p.stem.startswith("preset_") and p.stem not in CHAIN_PRESETS)
PRESETS = sorted(p.stem for p in (REPO / "conf/schedule").glob("preset_*.yaml"))
# Enough updates (8/epoch x 50) for every default warmup / decay / cycle to fit.
LONG = ["trainer.max_epochs=50"]


def test_every_schedule_in_conf_is_registered():
    from trainer.schedules.registry import schedule_names

    assert SCHEDULES == schedule_names()
    assert len(SCHEDULES) == 19


@pytest.mark.parametrize("name", CHAIN_PRESETS)
def test_chain_presets_are_chains_that_build(name):
    cfg = compose_config(f"schedule={name}", "trainer.max_steps=5000")  # preset_finetune warms up for 500
    _, schedule, _ = build_for_preview(cfg)
    assert schedule.name == "chain" and len(schedule.phases) >= 2


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_composes_and_builds(name):
    extra = ["schedule.interval=step"] if name in ("step", "multistep", "exponential") else []
    cfg = compose_config(f"schedule={name}", *LONG, *extra)
    optimizer, schedule, plan = build_for_preview(cfg)
    assert schedule.name == name
    lrs = [schedule.lr(u) for u in range(plan.max_updates)]
    assert all(lr >= 0 for lr in lrs) and max(lrs) > 0


@pytest.mark.parametrize(
    ("preset", "name", "peak", "warmup", "min_lr"),
    [  # seed 002's table; warmup over 10% of 5000 updates = 500
        ("preset_llm_pretrain", "warmup_cosine", 3e-4, 2000, 3e-6),
        ("preset_sft", "warmup_cosine", 2e-5, 100, 0.0),
        ("preset_dpo", "constant", 1e-6, 100, None),
        ("preset_lora", "warmup_cosine", 2e-4, 500, 0.0),
        ("preset_embedding", "linear", 2e-5, 500, 0.0),
    ],
)
def test_seed002_presets(preset, name, peak, warmup, min_lr):
    assert preset in PRESETS
    cfg = compose_config(f"schedule={preset}", "trainer.max_steps=5000")
    _, schedule, plan = build_for_preview(cfg)
    assert (schedule.name, schedule.peak_lr, plan.warmup_steps) == (name, peak, warmup)
    assert schedule.lr(warmup) == pytest.approx(peak)
    if min_lr is not None:
        assert schedule.lr(5000) == pytest.approx(min_lr, abs=1e-15)


def test_presets_cover_the_table_and_follow_an_overridden_peak():
    assert len(PRESETS) == 6  # the table's five rows and its fine-tuning paragraph (preset_finetune)
    cfg = compose_config("schedule=preset_llm_pretrain", "optimizer.lr=1e-3", "trainer.max_steps=5000")
    _, schedule, _ = build_for_preview(cfg)
    assert schedule.lr(5000) == pytest.approx(1e-5)  # final LR = peak / 100


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_models_and_optimizers_compose(model, optimizer):
    cfg = compose_config(f"model={model}", f"optimizer={optimizer}", "schedule=cosine", base=[])
    opt, _, plan = build_for_preview(cfg)
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    assert plan.updates_per_epoch == 60000 // 128


def test_plan_derives_total_steps_from_epochs_batches_and_accumulation():
    cfg = compose_config("schedule=cosine", "trainer.max_epochs=3", "trainer.accumulate_grad_batches=3")
    plan = plan_run(cfg, num_train_examples=1000)  # 1000 // 32 = 31 batches -> 10 updates/epoch
    assert (plan.updates_per_epoch, plan.max_updates, plan.num_epochs, plan.total_steps) == (10, 30, 3, 30)
    epochs = plan_run(compose_config("schedule=step", "trainer.max_epochs=7"), num_train_examples=1000)
    assert epochs.total_steps == 7  # interval=epoch counts epochs
    steps = plan_run(compose_config("schedule=cosine", "trainer.max_steps=45"), num_train_examples=1000)
    assert (steps.max_updates, steps.num_epochs, steps.total_steps) == (45, 2, 45)
    ratio = plan_run(compose_config("schedule=cosine", "schedule.warmup_ratio=0.1", "trainer.max_steps=45"), 1000)
    assert ratio.warmup_steps == 4  # round(4.5) with banker's rounding


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer.lr=0"], "optimizer.lr"),
        (["optimizer.lr=abc"], "optimizer.lr"),
        (["schedule=cosine", "schedule.interval=hour"], "schedule.interval"),
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
        (["trainer.clip_grad_norm=-1"], "trainer.clip_grad_norm"),
        (["trainer.device=tpu"], "trainer.device"),
        (["trainer.max_epochs=null"], "trainer.max_epochs"),
        (["logger.log_every_n_steps=0"], "logger.log_every_n_steps"),
        (["schedule=cosine", "schedule.warmup_steps=2", "schedule.warmup_ratio=0.1"], "schedule.warmup_ratio"),
        (["schedule=multistep", "schedule.milestones=[3,3]"], "schedule.milestones"),
        (["schedule=cyclic", "schedule.mode=min"], "schedule.mode"),
        (["schedule=plateau", "schedule.mode=triangular"], "schedule.mode"),
        (["schedule=plateau", "schedule.monitor=train/loss"], "schedule.monitor"),
        (["schedule=onecycle", "schedule.pct_start=1.5"], "schedule.pct_start"),
        (["schedule=onecycle", "schedule.pct_start=1.0"], "schedule.pct_start"),
        (["schedule=onecycle", "schedule.base_momentum=1.5"], "schedule.base_momentum"),
        (["schedule=onecycle", "schedule.three_phase=off"], "schedule.three_phase"),
        (["schedule=onecycle", "schedule.cycle_momentum=off"], "schedule.cycle_momentum"),
        (["schedule=multistep", "schedule.milestones=5"], "schedule.milestones"),
        (["schedule=inverse_time", "schedule.decay_steps=0"], "schedule.decay_steps"),
        (["schedule=exponential", "schedule.gamma=10"], "schedule.gamma"),  # seed 000: 0 < γ < 1
        (["schedule=cosine", "+schedule.min_Lr=0.1"], "schedule.min_Lr"),  # did you mean min_lr?
        (["schedule=lr_range_test", "schedule.num_steps=2"], "schedule.num_steps"),
        (["schedule=lr_range_test", "schedule.warmup_steps=10"], "schedule.warmup_steps"),
        (["schedule=lr_range_test", "schedule.interval=epoch"], "schedule.interval"),
        (["schedule=onecycle", "schedule.interval=epoch"], "schedule.interval"),
        (["schedule=lr_range_test", "schedule.temperature=2"], "schedule.temperature"),
        (["schedule=lr_range_test", "optimizer.lr_scaling=sqrt"], "optimizer.lr_scaling"),
        (["schedule.temperature=0"], "schedule.temperature"),
        (["schedule.warmup_start_lr=-1e-3"], "schedule.warmup_start_lr"),
        (["schedule.warmup_steps=5", "schedule.warmup_start_lr=0.5"], "schedule.warmup_start_lr"),  # above 1e-3
        (["trainer.clip_grad_norm=inf"], "trainer.clip_grad_norm"),
        (["schedule.temperature=inf"], "schedule.temperature"),
        (["optimizer.lr=inf"], "optimizer.lr"),
        (["optimizer.lr_scales={1:1e400}"], "optimizer.lr_scales.1"),
        (["optimizer.lr_scaling=cube"], "optimizer.lr_scaling"),
        (["optimizer=sgd", "optimizer.reference_batch_size=0"], "optimizer.reference_batch_size"),
        (["optimizer.lr_scales={layer1:0}"], "optimizer.lr_scales.layer1"),
        (["optimizer.lr_scales=0.1"], "optimizer.lr_scales"),
        (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], "optimizer.nesterov"),
        (["trainer.compile=fast"], "trainer.compile"),
        (["trainer.tf32=1"], "trainer.tf32"),
        (["data.loader=gpu"], "data.loader"),
        (["data.num_workers=-1"], "data.num_workers"),
        (["model.dropout=1.5"], "model.dropout"),
        (["model=gpt"], "data"),
    ],
)
def test_static_errors_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data=fashion_mnist", "data.augment=maybe"], "data.augment"),
        (["model=gpt", "data=shakespeare_char", "model.n_head=5"], "model.n_head"),
        (["model=gpt", "data=shakespeare_char", "model.block_size=0"], "model.block_size"),
        (["data=shakespeare_char"], "model"),  # checked before data.block_size reads model.block_size
    ],
)
def test_data_and_model_errors_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides, base=QUIET))
    assert error.value.key == key


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["schedule=cosine", "schedule.warmup_steps=31", "trainer.max_steps=30"], "schedule.warmup_steps"),
        (["data.batch_size=600"], "data.batch_size"),
        (["schedule=cosine", "schedule.temperature=1e308", "optimizer.lr_scaling=linear",
          "optimizer.reference_batch_size=1"], "schedule.temperature"),  # 32e308 overflows to inf
    ],
)
def test_derived_errors_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        plan_run(compose_config(*overrides), num_train_examples=512)
    assert error.value.key == key


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["schedule=inverse_sqrt", "schedule.warmup_steps=0"], "schedule.warmup_steps"),
        (["schedule=lr_range_test", "schedule.min_lr=1", "schedule.max_lr=0.1"], "schedule.max_lr"),
        (["schedule=wsd", "schedule.warmup_steps=10", "schedule.decay_steps=25", "trainer.max_steps=30"],
         "schedule.decay_steps"),
        # The rise must span more than one update (pct_start·T > 1), or its interpolation divides by 0.
        (["schedule=onecycle", "schedule.pct_start=0.01", "trainer.max_steps=100"], "schedule.pct_start"),
        (["schedule=onecycle", "schedule.pct_start=0.6", "schedule.three_phase=true", "trainer.max_steps=100"],
         "schedule.pct_start"),
    ],
)
def test_schedule_parameters_that_do_not_fit_the_run_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        build_for_preview(compose_config(*overrides))
    assert error.value.key == key


@pytest.mark.parametrize(
    ("overrides", "factor"),
    [
        (["optimizer.lr_scaling=sqrt", "data.batch_size=1024"], 2.0),  # seed 002: 1024 against 256 runs at 2η
        (["optimizer.lr_scaling=linear", "data.batch_size=512"], 2.0),
        (["optimizer.lr_scaling=sqrt", "data.batch_size=64", "trainer.accumulate_grad_batches=16"], 2.0),  # per update
        (["optimizer=sgd", "optimizer.lr_scaling=sqrt", "data.batch_size=64"], 0.5),  # smaller batch, smaller LR
        (["optimizer.lr_scaling=none", "data.batch_size=1024"], 1.0),
        (["optimizer.lr_scaling=sqrt", "data.batch_size=1024", "schedule.temperature=0.25"], 0.5),
    ],
)
def test_lr_scale_is_the_batch_size_rule_times_the_temperature(overrides, factor):
    cfg = compose_config(*overrides, "data.train_size=4096", "schedule=cosine")
    validate(cfg)
    assert plan_run(cfg, 4096).lr_scale == factor


@pytest.mark.parametrize(
    ("overrides", "warns"),
    [
        (["schedule=cosine"], True),  # AdamW at the peak from update 0
        (["schedule=wsd", "schedule.warmup_steps=0", "schedule.decay_steps=5"], True),
        (["schedule=warmup_cosine", "schedule.warmup_steps=5"], False),
        (["schedule=cosine", "schedule.warmup_ratio=0.1"], False),
        (["schedule=onecycle"], False),  # starts at peak/25: its own warmup
        (["schedule=cosine", "optimizer=sgd"], False),  # seed 004: "With SGD ... warmup is less critical"
    ],
)
def test_a_transformer_without_warmup_under_adamw_is_warned(tmp_path, overrides, warns):
    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be, that is the question\n" * 50)
    cfg = compose_config("model=gpt", "data=shakespeare_char", f"data.path={text}", "data.batch_size=4",
                         "model.block_size=16", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                         "trainer.max_epochs=1", *overrides, base=QUIET)
    _, schedule, _ = build_for_preview(cfg)
    warning = warmup_warning(cfg, schedule)
    assert (warning is not None) == warns
    if warns:
        assert warning.startswith("warning: schedule.warmup_steps: model=gpt trains with AdamW from ")
    assert warmup_warning(compose_config(*overrides), schedule) is None  # an MLP is not warned
