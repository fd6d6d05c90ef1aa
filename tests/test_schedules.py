"""Schedules against the seeds' worked tables (golden), torch's schedulers, and hand-computed rows."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from trainer.errors import ConfigError
from trainer.schedules import ReduceOnPlateau, build_schedule

L = torch.optim.lr_scheduler


def make(name, *, peak_lr, total_steps, warmup_steps=0, warmup_from_zero=True, interval="step",
         updates_per_epoch=1, **params):
    cfg = OmegaConf.create({"name": name, "interval": interval, "warmup_steps": warmup_steps,
                            "warmup_from_zero": warmup_from_zero, "total_steps": None, **params})
    return build_schedule(cfg, peak_lr=peak_lr, total_steps=total_steps, updates_per_epoch=updates_per_epoch)


def lrs(schedule, n):
    return [schedule.lr(t) for t in range(n)]


# --- seed 000 ---------------------------------------------------------------------------------

def seed000_get_lr(step, warmup_steps, total_steps, lr_max, lr_min):
    """Seed 000's get_lr, transcribed from the article."""
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * progress))


def test_seed000_step_decay_table():
    # "Epoch 1-30: 0.1, 31-60: 0.01, 61-90: 0.001" with StepLR(step_size=30, gamma=0.1); t = epoch - 1
    s = make("step", peak_lr=0.1, total_steps=90, step_size=30, gamma=0.1)
    assert all(s.lr(t) == pytest.approx(0.1) for t in range(0, 30))
    assert all(s.lr(t) == pytest.approx(0.01) for t in range(30, 60))
    assert all(s.lr(t) == pytest.approx(0.001) for t in range(60, 90))


def test_seed000_exponential_values():
    s = make("exponential", peak_lr=0.1, total_steps=50, gamma=0.95)
    # The article prints 0.0598 and 0.0077: the formula gives 0.059874 and 0.0076945, which agree
    # within one unit of the last printed digit (the first is truncated, not rounded).
    assert s.lr(10) == pytest.approx(0.1 * 0.95**10, rel=1e-15)
    assert s.lr(10) == pytest.approx(0.0598, abs=1e-4)
    assert s.lr(50) == pytest.approx(0.1 * 0.95**50, rel=1e-15)
    assert s.lr(50) == pytest.approx(0.0077, abs=1e-4)


@pytest.mark.parametrize(
    ("t", "printed", "last_digit"),  # the table's value and one unit of its last printed digit
    [(0, 1e-3, 1e-18), (250, 8.5e-4, 1e-5), (500, 5.05e-4, 1e-6), (750, 1.5e-4, 1e-5), (1000, 1e-5, 1e-18)],
)
def test_seed000_cosine_table(t, printed, last_digit):
    s = make("cosine", peak_lr=1e-3, total_steps=1000, min_lr=1e-5)
    exact = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 1000))
    assert s.lr(t) == pytest.approx(exact, rel=1e-12)
    # "~8.5e-4" and "~1.5e-4" come from cos rounded to 0.71; the formula gives 8.55e-4 and 1.55e-4.
    assert s.lr(t) == pytest.approx(printed, abs=last_digit)


def test_seed000_warmup_cosine_table():
    s = make("warmup_cosine", peak_lr=3e-4, total_steps=5000, warmup_steps=200, min_lr=1e-5)
    assert s.lr(0) == 0.0
    assert s.lr(100) == pytest.approx(1.5e-4, rel=1e-12)
    assert s.lr(200) == pytest.approx(3e-4, rel=1e-12)
    # The table prints ~1.53e-4, but the article's own formula gives (3e-4 + 1e-5) / 2: the formula wins.
    assert s.lr(2600) == pytest.approx((3e-4 + 1e-5) / 2, rel=1e-12)
    assert s.lr(5000) == pytest.approx(1e-5, rel=1e-12)
    assert lrs(s, 5001) == pytest.approx([seed000_get_lr(t, 200, 5000, 3e-4, 1e-5) for t in range(5001)],
                                         rel=1e-12, abs=1e-18)


# --- seed 003 ---------------------------------------------------------------------------------

def test_seed003_multistep():
    s = make("multistep", peak_lr=0.1, total_steps=120, milestones=[30, 60, 90], gamma=0.1)
    expected = [0.1] * 30 + [0.01] * 30 + [0.001] * 30 + [0.0001] * 30
    assert lrs(s, 120) == pytest.approx(expected, rel=1e-12)


def seed003_lr_lambda(step, total_steps=10000, warmup_steps=1000, min_lr_ratio=0.1):
    """Seed 003's LambdaLR multiplier, transcribed from the article."""
    if step < warmup_steps:
        return float(step + 1) / float(warmup_steps)
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def test_seed003_warmup_plus_one_with_min_lr_ratio():
    base = 3e-4
    s = make("warmup_cosine", peak_lr=base, total_steps=10000, warmup_steps=1000, warmup_from_zero=False,
             min_lr=0.1 * base)
    assert s.lr(0) == pytest.approx(base / 1000)  # no update wasted at LR 0
    assert s.lr(999) == pytest.approx(base)
    assert lrs(s, 10000) == pytest.approx([base * seed003_lr_lambda(t) for t in range(10000)], rel=1e-12)


def test_seed003_lr_range_test_formula():
    s = make("lr_range_test", peak_lr=0.1, total_steps=200, min_lr=1e-6, max_lr=1.0, num_steps=200)
    assert s.lr(0) == pytest.approx(1e-6)
    assert s.lr(199) == pytest.approx(1.0)
    expected = [1e-6 * (1.0 / 1e-6) ** (t / (200 - 1)) for t in range(200)]
    assert lrs(s, 200) == pytest.approx(expected, rel=1e-12)


# --- torch.optim.lr_scheduler references ------------------------------------------------------

def torch_sequence(make_scheduler, n, lr=0.1, momentum=0.9):
    """LR and momentum each update uses, the standard way: read before step(), then scheduler.step()."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr, momentum=momentum)
    scheduler = make_scheduler(optimizer)
    seen_lr, seen_momentum = [], []
    for _ in range(n):
        seen_lr.append(optimizer.param_groups[0]["lr"])
        seen_momentum.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return seen_lr, seen_momentum


TORCH_CASES = {
    "step": (dict(step_size=7, gamma=0.5), lambda o: L.StepLR(o, 7, 0.5)),
    "multistep": (dict(milestones=[10, 30, 31], gamma=0.3), lambda o: L.MultiStepLR(o, [10, 30, 31], 0.3)),
    "exponential": (dict(gamma=0.97), lambda o: L.ExponentialLR(o, 0.97)),
    "cosine": (dict(min_lr=1e-3), lambda o: L.CosineAnnealingLR(o, 200, 1e-3)),
    "polynomial": (dict(power=2.0), lambda o: L.PolynomialLR(o, 200, 2.0)),
    "cosine_restarts_tmult1": (dict(T_0=9, T_mult=1, min_lr=0.0),
                               lambda o: L.CosineAnnealingWarmRestarts(o, 9, 1, 0.0)),
    "cosine_restarts_tmult2": (dict(T_0=7, T_mult=2, min_lr=1e-3),
                               lambda o: L.CosineAnnealingWarmRestarts(o, 7, 2, 1e-3)),
    "cyclic_triangular": (dict(min_lr=0.01, step_size_up=6),
                          lambda o: L.CyclicLR(o, 0.01, 0.1, 6, cycle_momentum=False)),
    "cyclic_triangular2": (dict(min_lr=0.01, step_size_up=6, mode="triangular2"),
                           lambda o: L.CyclicLR(o, 0.01, 0.1, 6, mode="triangular2", cycle_momentum=False)),
    "cyclic_exp_range": (dict(min_lr=0.01, step_size_up=6, step_size_down=4, mode="exp_range", gamma=0.99),
                         lambda o: L.CyclicLR(o, 0.01, 0.1, 6, 4, mode="exp_range", gamma=0.99,
                                              cycle_momentum=False)),
    "onecycle": (dict(), lambda o: L.OneCycleLR(o, 0.1, total_steps=200)),
    "onecycle_linear_three_phase": (dict(three_phase=True, anneal_strategy="linear", pct_start=0.25),
                                    lambda o: L.OneCycleLR(o, 0.1, total_steps=200, three_phase=True,
                                                           anneal_strategy="linear", pct_start=0.25)),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch_scheduler(case):
    params, make_scheduler = TORCH_CASES[case]
    name = case.split("_tmult")[0].removesuffix("_triangular").removesuffix("_triangular2")
    name = {"cyclic_exp_range": "cyclic", "onecycle_linear_three_phase": "onecycle"}.get(name, name)
    s = make(name, peak_lr=0.1, total_steps=200, **params)
    expected_lr, expected_momentum = torch_sequence(make_scheduler, 200)
    assert lrs(s, 200) == pytest.approx(expected_lr, rel=1e-12, abs=1e-15)
    if name == "onecycle":
        assert [s.momentum(t) for t in range(200)] == pytest.approx(expected_momentum, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "torch_kwargs"),
    [
        (dict(mode="min", factor=0.5, patience=1, cooldown=0, min_lr=0.0), dict(mode="min", factor=0.5, patience=1)),
        (dict(mode="max", factor=0.1, patience=0, cooldown=2, min_lr=0.002),
         dict(mode="max", factor=0.1, patience=0, cooldown=2, min_lr=0.002)),
    ],
)
def test_plateau_matches_reduce_lr_on_plateau(kwargs, torch_kwargs):
    metrics = [1.0, 0.9, 0.9, 0.95, 0.91, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.71, 0.72, 0.69, 0.69, 0.69]
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    reference = L.ReduceLROnPlateau(optimizer, threshold=1e-4, **torch_kwargs)
    ours = ReduceOnPlateau(peak_lr=0.1, threshold=1e-4, **kwargs)
    for metric in metrics:
        reference.step(metric)
        ours.observe(metric)
        assert ours.lr == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
    assert ours.lr < 0.1  # the sequence did trigger cuts


# --- hand-computed rows for schedules torch lacks ---------------------------------------------

def test_constant_and_inverse_time():
    assert lrs(make("constant", peak_lr=0.3, total_steps=5), 5) == [0.3] * 5
    s = make("inverse_time", peak_lr=0.1, total_steps=100, decay_rate=0.5, decay_steps=10)
    assert [s.lr(t) for t in (0, 10, 20, 40)] == pytest.approx([0.1, 0.1 / 1.5, 0.1 / 2.0, 0.1 / 3.0])


def test_linear_and_polynomial_with_floor():
    s = make("linear", peak_lr=0.1, total_steps=10, min_lr=0.02)
    assert [s.lr(t) for t in (0, 5, 10, 15)] == pytest.approx([0.1, 0.06, 0.02, 0.02])
    p = make("polynomial", peak_lr=0.1, total_steps=10, power=2.0, min_lr=0.01)
    assert [p.lr(t) for t in (0, 5, 10)] == pytest.approx([0.1, 0.09 * 0.25 + 0.01, 0.01])


@pytest.mark.parametrize(
    ("shape", "mid"),  # total 100, decay over the last 40 (60..100); value half-way through it, at t=80
    [("linear", 0.055), ("cosine", 0.055), ("sqrt", 0.01 + 0.09 * (1 - math.sqrt(0.5)))],
)
def test_wsd(shape, mid):
    s = make("wsd", peak_lr=0.1, total_steps=100, warmup_steps=10, decay_steps=40, decay_shape=shape, min_lr=0.01)
    assert s.lr(0) == 0.0 and s.lr(5) == pytest.approx(0.05)
    assert all(s.lr(t) == pytest.approx(0.1) for t in range(10, 61))
    assert s.lr(80) == pytest.approx(mid)
    assert s.lr(100) == pytest.approx(0.01)
    assert s.lr(70) < 0.1


def test_inverse_sqrt():
    s = make("inverse_sqrt", peak_lr=0.1, total_steps=1000, warmup_steps=100)
    assert [s.lr(t) for t in (0, 50)] == pytest.approx([0.0, 0.05])
    assert [s.lr(t) for t in (100, 400, 900)] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert all(s.lr(t) == pytest.approx(0.1 * math.sqrt(100 / max(t, 100))) for t in range(100, 1000))


def test_generic_warmup_on_a_step_schedule():
    s = make("step", peak_lr=0.1, total_steps=40, warmup_steps=5, step_size=10, gamma=0.5)
    assert lrs(s, 5) == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert [s.lr(t) for t in (5, 14, 15, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_per_epoch_interval_holds_within_an_epoch():
    s = make("exponential", peak_lr=0.1, total_steps=5, gamma=0.5, interval="epoch", updates_per_epoch=7)
    assert [s.position(u) for u in (0, 6, 7, 13, 14)] == [0, 0, 1, 1, 2]
    assert [s.lr(u) for u in range(21)] == pytest.approx([0.1] * 7 + [0.05] * 7 + [0.025] * 7)


# --- properties ------------------------------------------------------------------------------

DECAYS = ["cosine", "linear", "polynomial", "wsd", "warmup_cosine"]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(DECAYS),
    total=st.integers(2, 400),
    warmup_fraction=st.floats(0, 0.9),
    peak=st.floats(1e-5, 1.0),
    floor_fraction=st.floats(0, 0.5),
)
def test_decays_stay_in_range_and_never_rise_after_warmup(name, total, warmup_fraction, peak, floor_fraction):
    warmup = int(total * warmup_fraction)
    min_lr = peak * floor_fraction
    extra = {"decay_steps": (total - warmup) // 2} if name == "wsd" else {}
    s = make(name, peak_lr=peak, total_steps=total, warmup_steps=warmup, min_lr=min_lr, **extra)
    after = [s.lr(t) for t in range(warmup, total + 20)]
    tolerance = 1e-12 * peak
    assert all(min_lr - tolerance <= lr <= peak + tolerance for lr in after)
    assert all(b <= a + tolerance for a, b in zip(after, after[1:]))
    assert after[-1] == pytest.approx(min_lr, abs=tolerance)  # holds the floor past T
    if warmup:
        assert abs(s.lr(warmup) - s.lr(warmup - 1)) <= peak / warmup + tolerance  # continuous at the seam


# --- errors -----------------------------------------------------------------------------------

def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        make("cosinus", peak_lr=0.1, total_steps=10)
    assert error.value.key == "schedule" and "warmup_cosine" in str(error.value)


def test_unknown_parameter_names_its_key():
    with pytest.raises(ConfigError) as error:
        make("cosine", peak_lr=0.1, total_steps=10, gamma=0.5)
    assert error.value.key == "schedule.gamma" and "min_lr" in str(error.value)
