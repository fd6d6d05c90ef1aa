"""schedule=chain against its phases' formulas stitched by hand, the presets against their sources
(nanoGPT's get_lr, fast.ai's fit_flat_cos, seed 002's fine-tuning paragraph), and its errors.

Every expected LR is computed here from the phase formulas written out below (or from torch's
OneCycleLR), never from ``trainer.schedules``.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

import trainer
from tests.conftest import QUIET, TINY, compose_config, run_cli
from tests.test_experiments import text_file
from trainer.app.build import build_for_preview
from trainer.app.validate import validate
from trainer.errors import ConfigError
from trainer.rundir.events import read_scalars
from trainer.schedules.registry import build_schedule


def make_chain(phases, *, peak_lr, total_steps, interval="step", updates_per_epoch=1):
    cfg = OmegaConf.create({"name": "chain", "interval": interval, "warmup_steps": 0, "warmup_ratio": None,
                            "warmup_from_zero": True, "total_steps": None, "phases": phases})
    return build_schedule(cfg, peak_lr=peak_lr, total_steps=total_steps, updates_per_epoch=updates_per_epoch)


def cos_between(start, end, fraction):
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def assert_lrs(schedule, expected, *, rel=1e-12):
    ours = [schedule.lr(u) for u in range(len(expected))]
    bad = [(u, a, e) for u, (a, e) in enumerate(zip(ours, expected)) if not math.isclose(a, e, rel_tol=rel, abs_tol=0)]
    assert not bad, f"{len(bad)} updates differ; first (update, ours, expected): {bad[:3]}"


def nanogpt_get_lr(it, *, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """karpathy/nanoGPT train.py's get_lr, written out."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


# --- stitched by hand -------------------------------------------------------------------------

def test_a_chain_is_its_phases_stitched_with_each_peak_where_the_last_ended():
    peak = 0.1
    s = make_chain([
        {"name": "linear_warmup", "steps": 10},
        {"name": "cosine", "steps": 30, "min_lr": 0.01},
        {"name": "constant", "steps": 5},
        {"name": "exponential", "gamma": 0.9},  # the rest: 15
    ], peak_lr=peak, total_steps=60)

    def by_hand(t):
        if t < 10:
            return peak * t / 10
        if t < 40:
            return cos_between(peak, 0.01, (t - 10) / 30)
        if t < 45:
            return 0.01  # where the cosine ended
        return 0.01 * 0.9 ** (t - 45)  # and the exponential starts there; past T it goes on

    assert_lrs(s, [by_hand(t) for t in range(70)])
    assert s.phases == (("linear_warmup", 0), ("cosine", 10), ("constant", 40), ("exponential", 45))
    # Continuous: each phase starts at the value the previous phase's formula reaches at its end.
    assert s.lr(10) == peak and s.lr(40) == s.lr(45) == pytest.approx(cos_between(peak, 0.01, 1.0), rel=1e-12)


def test_a_phase_may_set_its_own_peak_and_the_rest_may_be_in_the_middle():
    peak = 0.1
    s = make_chain([
        {"name": "linear_warmup", "fraction": 0.1, "offset": 1},  # round(0.1 x 50) = 5
        {"name": "step", "step_size": 3, "gamma": 0.5, "lr_ratio": 0.5},  # the rest: 50 - 5 - 10 = 35
        {"name": "linear", "fraction": 0.2, "lr": 0.02, "min_lr": 0.0},  # 10
    ], peak_lr=peak, total_steps=50)

    def by_hand(t):
        if t < 5:
            return peak * (t + 1) / 6
        if t < 40:
            return 0.05 * 0.5 ** ((t - 5) // 3)
        return 0.02 * (1 - (t - 40) / 10)

    assert_lrs(s, [by_hand(t) for t in range(50)])
    assert s.lr(50) == s.lr(60) == 0.0  # linear holds its floor past T


def test_epoch_phases_count_epochs_and_mark_their_first_update():
    s = make_chain([{"name": "linear_warmup", "steps": 2}, {"name": "cosine"}], peak_lr=0.1, total_steps=5,
                   interval="epoch", updates_per_epoch=4)
    epochs = [0.0, 0.05] + [cos_between(0.1, 0.0, e / 3) for e in range(3)]
    assert_lrs(s, [epochs[u // 4] for u in range(20)])
    assert s.phase_starts() == [(8, "cosine")]


def test_a_onecycle_phase_moves_momentum_and_the_others_hold_its_ends():
    peak, length = 0.1, 20
    s = make_chain([{"name": "constant", "steps": 4}, {"name": "onecycle", "steps": length}, {"name": "constant"}],
                   peak_lr=peak, total_steps=30)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak, momentum=0.9)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=length)
    torch_lrs, torch_momenta = [], []
    for _ in range(length):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        torch_momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        reference.step()
    final = peak / 25 / 1e4
    assert_lrs(s, [peak] * 4 + torch_lrs + [final] * 6, rel=1e-9)
    momenta = [s.momentum(u) for u in range(30)]
    assert momenta == pytest.approx([0.95] * 4 + torch_momenta + [0.95] * 6, rel=1e-9)


def test_without_a_momentum_phase_the_optimizers_momentum_is_left_alone():
    s = make_chain([{"name": "linear_warmup", "steps": 3}, {"name": "cosine"}], peak_lr=0.1, total_steps=10)
    assert s.momentum_fn is None and s.momentum(5) is None


# --- plateau after a warmup -------------------------------------------------------------------

def test_a_plateau_after_a_warmup_sees_only_the_validations_after_it():
    s = make_chain([{"name": "linear_warmup", "steps": 6}, {"name": "plateau", "patience": 0, "factor": 0.5}],
                   peak_lr=0.1, total_steps=20)
    alone = make_chain([{"name": "plateau", "patience": 0, "factor": 0.5}], peak_lr=0.1, total_steps=20)
    for done in (2, 4, 6, 8, 10):  # the loss never improves
        s.observe({"val/loss": 1.0}, done)
        alone.observe({"val/loss": 1.0}, done)
    # Alone, the second validation (after update 4) would have cut, inside what is the warmup here.
    assert alone.plateau.lr == pytest.approx(0.1 * 0.5**4)
    # Here 2 and 4 are before the plateau phase; 6 is its baseline; 8 and 10 cut.
    assert s.plateau_start == 6 and s.plateau.lr == pytest.approx(0.1 * 0.25)
    assert [s.lr(u) for u in range(6)] == pytest.approx([0.1 * u / 6 for u in range(6)], rel=1e-12)
    assert s.lr(6) == s.lr(19) == pytest.approx(0.025, rel=1e-12)


def test_plateau_after_warmup_cuts_only_after_the_warmup_through_the_cli(tmp_path):
    """Validation after every epoch of 8 updates: those after updates 8 and 16 fall in the 24-update
    warmup and are ignored, 24 is the baseline, 32 is a cut (threshold 0.99: nothing improves)."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [
        *TINY, f"hydra.run.dir={run_dir}", "schedule=chain", "optimizer.lr=0.01", "trainer.max_epochs=5",
        "schedule.phases=[{name:linear_warmup,steps:24},{name:plateau,patience:0,factor:0.5,threshold:0.99}]",
    ])
    lrs = [v for _, v in read_scalars(run_dir)["train/lr"]]
    expected = [0.01 * u / 24 for u in range(24)] + [0.01] * 8 + [0.005] * 8
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)


# --- presets --------------------------------------------------------------------------------

NANOGPT_SHAKESPEARE = {"learning_rate": 1e-3, "warmup_iters": 100, "lr_decay_iters": 5000, "min_lr": 1e-4}


def test_gpt_shakespeare_char_runs_nanogpts_get_lr_at_every_iteration(tmp_path):
    cfg = compose_config("experiment=gpt_shakespeare_char", f"data.path={text_file(tmp_path)}", base=[])
    assert cfg.trainer.max_steps == NANOGPT_SHAKESPEARE["lr_decay_iters"]
    _, schedule, plan = build_for_preview(cfg)
    iterations = range(plan.max_updates + 1)  # nanoGPT's loop also runs iteration max_iters
    assert [schedule.lr(it) for it in iterations] == [nanogpt_get_lr(it, **NANOGPT_SHAKESPEARE) for it in iterations]


def test_nanogpt_with_its_decay_ending_before_the_run_holds_min_lr():
    recipe = {"learning_rate": 6e-4, "warmup_iters": 20, "lr_decay_iters": 80, "min_lr": 6e-5}
    s = make_chain([{"name": "linear_warmup", "steps": 20, "offset": 1}, {"name": "cosine", "steps": 60, "min_lr": 6e-5},
                    {"name": "constant"}], peak_lr=6e-4, total_steps=100)
    assert [s.lr(it) for it in range(121)] == [nanogpt_get_lr(it, **recipe) for it in range(121)]


def test_flat_cosine_is_fastais_fit_flat_cos():
    _, s, _ = build_for_preview(compose_config("schedule=flat_cosine", "optimizer.lr=0.01", "trainer.max_steps=400"))
    # combined_cos(0.75, lr, lr, lr / div_final): flat to 300, then cosine to lr / 1e5 over 100
    assert_lrs(s, [0.01 if t < 300 else cos_between(0.01, 0.01 / 1e5, (t - 300) / 100) for t in range(401)])


def test_preset_finetune_is_seed002s_short_warmup_plateau_and_final_tenth_decay():
    _, s, _ = build_for_preview(compose_config("schedule=preset_finetune", "optimizer.lr=1e-4", "trainer.max_steps=5000"))

    def by_hand(t):
        if t < 500:  # "500-1000 steps sufficient"
            return 1e-4 * t / 500
        if t < 4500:  # constant, "decay only in final 10%"
            return 1e-4
        return cos_between(1e-4, 0.0, (t - 4500) / 500)

    assert_lrs(s, [by_hand(t) for t in range(5001)])


@pytest.mark.parametrize(
    ("preset", "overrides", "formula"),
    [
        # lengths 4, 20 - 4 - 2 = 14, round(0.1 x 20) = 2
        ("preset_finetune", ["schedule.phases.0.steps=4", "trainer.max_steps=20"],
         lambda t: 1e-3 * t / 4 if t < 4 else 1e-3 if t < 18 else cos_between(1e-3, 0.0, (t - 18) / 2)),
        # flat for round(0.75 x 16) = 12, cosine to 1e-3 / 1e5 over 4
        ("flat_cosine", ["trainer.max_steps=16"],
         lambda t: 1e-3 if t < 12 else cos_between(1e-3, 1e-8, (t - 12) / 4)),
        ("nanogpt", ["schedule.phases.0.steps=3", "trainer.max_steps=12"],
         lambda t: nanogpt_get_lr(t, learning_rate=1e-3, warmup_iters=3, lr_decay_iters=12, min_lr=1e-4)),
    ],
)
def test_presets_train_through_the_cli_with_their_formula_logged(tmp_path, preset, overrides, formula):
    run_dir = tmp_path / "run"
    run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", f"schedule={preset}", *overrides])
    lrs = [v for _, v in read_scalars(run_dir)["train/lr"]]
    assert lrs == pytest.approx([formula(t) for t in range(len(lrs))], rel=1e-6, abs=1e-12)
    assert len(lrs) == OmegaConf.load(run_dir / "config.yaml").trainer.max_steps


# --- errors ---------------------------------------------------------------------------------

def test_lengths_that_do_not_add_up_are_one_line_exit_2_and_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [
        *QUIET, "data=synthetic", "model=mlp", f"hydra.run.dir={run_dir}", "schedule=chain", "trainer.max_steps=50",
        "schedule.phases=[{name:linear_warmup,steps:10},{name:cosine,steps:30}]",
    ], check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: schedule.phases.1.steps: phase 1 (cosine, 30 steps)")
    assert "ends at step 40" in lines[0] and "total_steps=50" in lines[0]
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("phases", "key", "words"),
    [
        ("[{name:cosine,min_Lr:0.1}]", "schedule.phases.0.min_Lr", "did you mean min_lr"),
        ("[{name:constant,steps:5},{name:step,gamma:2}]", "schedule.phases.1.gamma", "got 2"),
        ("[{name:cosinus}]", "schedule.phases.0.name", "expected one of"),
        ("[{name:chain}]", "schedule.phases.0.name", "does not nest"),
        ("[{name:cosine,steps:5,fraction:0.5},{name:constant}]", "schedule.phases.0.fraction", "not both"),
        ("[{name:cosine,lr:0.1,lr_ratio:0.5}]", "schedule.phases.0.lr_ratio", "not both"),
        ("[{name:constant},{name:cosine}]", "schedule.phases.0.steps", "only one may take the rest"),
        ("[{name:plateau,steps:5},{name:cosine}]", "schedule.phases.0.name", "must be the last"),
        ("[{name:constant,steps:0},{name:cosine}]", "schedule.phases.0.steps", "got 0"),
        ("[]", "schedule.phases", "at least 1"),
    ],
)
def test_bad_phases_name_their_key_on_one_line(phases, key, words):
    with pytest.raises(ConfigError) as error:
        validate(compose_config("schedule=chain", f"schedule.phases={phases}"))
    assert error.value.key == key and words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # the phase's own fit check, keyed to the phase: wsd's decay of 30 does not fit its 20
        (["schedule.phases=[{name:constant,steps:10},{name:wsd,decay_steps:30}]"], "schedule.phases.1.decay_steps"),
        (["schedule.warmup_steps=5"], "schedule.warmup_steps"),
        (["schedule.warmup_ratio=0.1"], "schedule.warmup_ratio"),
        (["schedule.interval=epoch", "schedule.phases=[{name:constant,steps:1},{name:onecycle}]"], "schedule.interval"),
    ],
)
def test_chain_errors_found_when_built_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        build_for_preview(compose_config("schedule=chain", "trainer.max_steps=30", *overrides))
    assert error.value.key == key


# --- preview and the Python API -------------------------------------------------------------

def test_preview_marks_and_lists_the_joins(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from trainer.preview import write_preview

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kwargs: drawn.append(fig))
    write_preview(compose_config("schedule=nanogpt", "trainer.max_steps=400"), tmp_path)
    vertical = [line.get_xdata() for line in drawn[0].axes[0].get_lines() if len(set(line.get_xdata())) == 1]
    assert [x[0] for x in vertical] == [100]


def test_preview_prints_the_phases(tmp_path):
    proc = run_cli("trainer.preview", [*TINY, f"hydra.run.dir={tmp_path / 'p'}", "schedule=preset_finetune",
                                       "trainer.max_steps=1000"])
    assert "phases: linear_warmup, then constant from update 500, cosine from update 900" in proc.stdout
    assert (tmp_path / "p" / "lr.png").is_file()


def test_a_chain_through_the_python_api_and_its_plateau_refused():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = trainer.lr_scheduler(optimizer, "chain", total_steps=10,
                                     phases=[{"name": "linear_warmup", "steps": 4}, {"name": "constant"}])
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.025, 0.05, 0.075] + [0.1] * 6, rel=1e-12)
    with pytest.raises(ConfigError) as error:
        trainer.lr_scheduler(optimizer, "chain", total_steps=10,
                             phases=[{"name": "linear_warmup", "steps": 4}, {"name": "plateau"}])
    assert error.value.key == "schedule.phases"
