"""Control by metrics (issue 15): early stopping, gradient-norm spikes, the weight EMA."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import pytest
import torch

from tests.conftest import TINY, compose_config, run_cli
from tests.test_components import run_user_cli
from tests.test_loop import batch, linear_setup, make_step
from tests.test_resume import preempt_after, straight_and_resumed
from trainer import controls as controls_package
from trainer.app import run as run_module
from trainer.app.run import train
from trainer.app.validate import validate
from trainer.controls import Control, Read, Stop
from trainer.controls.early_stopping import EarlyStopping
from trainer.controls.ema import WeightEMA
from trainer.controls.grad_spike import GradSpike
from trainer.controls.nonfinite import NonFinite
from trainer.data.batches import epoch_order
from trainer.distributed import World
from trainer.errors import ConfigError, GradSpikeStop, Preempted
from trainer.params import Param
from trainer.rundir.checkpoint import load_checkpoint
from trainer.rundir.events import read_scalars
from trainer.schedules.schedule import apply_schedule
from trainer.training.precision import unit_grad_scaler
from trainer.training.step import vetoing

# ---------------------------------------------------------------- early stopping

NAN = math.nan


@pytest.mark.parametrize(("settings", "values", "stops_at"), [
    # improvements at 0 and 1, then two validations without one
    ({"mode": "min", "patience": 2, "min_delta": 0.0}, [1.0, 0.9, 0.95, 0.91, 0.89], 3),
    # 0.96 is only 0.04 below 1.0: not an improvement by more than 0.05; 0.94 is (0.06); then 0.90, 0.93 are not
    ({"mode": "min", "patience": 2, "min_delta": 0.05}, [1.0, 0.96, 0.94, 0.90, 0.93, 0.5], 4),
    # higher is better; an equal value is no improvement
    ({"mode": "max", "patience": 1, "min_delta": 0.0}, [0.5, 0.6, 0.6, 0.9], 2),
    # a non-finite value never improves
    ({"mode": "min", "patience": 2, "min_delta": 0.0}, [NAN, NAN, 1.0], 1),
])
def test_early_stopping_on_a_scripted_metric_sequence(settings, values, stops_at):
    rule = EarlyStopping(monitor="val/loss", **settings)
    decisions = [rule.observe(value, updates_done=8 * (i + 1)) for i, value in enumerate(values[: stops_at + 1])]
    assert decisions == [False] * stops_at + [True]
    assert rule.stopped_at == 8 * (stops_at + 1)


def test_early_stopping_state_resumes_to_the_same_decision():
    values = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98]
    straight = EarlyStopping(monitor="val/loss", mode="min", patience=3, min_delta=0.0)
    expected = [straight.observe(v, i) for i, v in enumerate(values)]
    first = EarlyStopping(monitor="val/loss", mode="min", patience=3, min_delta=0.0)
    seen = [first.observe(v, i) for i, v in enumerate(values[:3])]
    resumed = EarlyStopping(monitor="val/loss", mode="min", patience=3, min_delta=0.0)
    resumed.load_state_dict(first.state_dict())
    seen += [resumed.observe(v, i + 3) for i, v in enumerate(values[3:])]
    assert seen == expected == [False, False, False, False, True, True]


def expected_stop(values: list[tuple[int, float]], patience: int, min_delta: float) -> int | None:
    """Lightning's rule, written out: the update after which `patience` validations in a row did not
    go below the best by more than min_delta."""
    best, bad = math.inf, 0
    for step, value in values:
        if value < best - min_delta:
            best, bad = value, 0
        else:
            bad += 1
            if bad == patience:
                return step
    return None


# 8 updates an epoch, 10 epochs; at this LR val/loss stops falling after about 5 epochs
EARLY = ["schedule=constant", "optimizer.lr=0.01", "trainer.max_epochs=10", "trainer.early_stopping.patience=2",
         "trainer.early_stopping.min_delta=0.01"]


def test_early_stopping_through_the_cli_stops_after_a_validation_and_exits_0(train_cli):
    proc, run_dir = train_cli(*EARLY)
    val = read_scalars(run_dir)["val/loss"]
    stop = expected_stop(val, patience=2, min_delta=0.01)
    assert stop is not None and stop < 80  # the case this test is about: it did stop early
    assert val[-1][0] == stop and max(s for s, _ in read_scalars(run_dir)["train/lr"]) == stop - 1
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "early_stopped" and summary["metrics"]["updates"] == stop
    assert load_checkpoint(run_dir / "last.pt")["update"] == stop
    assert f"stopped after {stop} updates" in proc.stdout + proc.stderr
    assert f"run early stopped: {stop} updates" in proc.stdout

    again = run_cli("trainer", [*TINY, f"hydra.run.dir={run_dir}", *EARLY, "trainer.resume=auto"])
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "early_stopped"
    assert load_checkpoint(run_dir / "last.pt")["update"] == stop  # trained nothing more
    assert max(s for s, _ in read_scalars(run_dir)["train/lr"]) == stop - 1
    assert again.returncode == 0


def test_early_stopping_across_a_resume_stops_at_the_same_update(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(compose_config(*EARLY), straight)
    stop = load_checkpoint(straight / "last.pt")["update"]
    assert stop < 80
    with monkeypatch.context() as patch:
        preempt_after(patch, 20)  # mid-epoch, after two validations
        with pytest.raises(Preempted):
            train(compose_config(*EARLY), resumed)
    metrics = train(compose_config(*EARLY, "trainer.resume=auto"), resumed)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert metrics["updates"] == b["update"] == stop
    a_stop, b_stop = a["controls"]["early_stopping"], b["controls"]["early_stopping"]
    assert a_stop == b_stop and a_stop["stopped_at"] == stop
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


# ---------------------------------------------------------------- gradient-norm spikes


def judge(norms: list[float], *, factor: float, window: int, spike: GradSpike | None = None) -> list[bool]:
    spike = spike or GradSpike(factor=factor, window=window, action="skip", device=torch.device("cpu"))
    return [bool(spike.observe(torch.tensor(n))) for n in norms]


def test_a_spike_is_judged_against_the_median_of_the_full_window_before_it():
    # window 3: nothing is judged while it fills (100 at update 1 included); then the median of the
    # three norms before each one: [1,100,1] -> 1, [100,1,1] -> 1, [1,1,1] -> 1 (5 > 2 × 1), [1,1,5] -> 1
    assert judge([1, 100, 1, 1, 1, 5, 1], factor=2, window=3) == [False] * 5 + [True, False]
    # an even window takes the lower middle value: median [1,2,3,10] = 2, so 5 > 2 × 2 is a spike
    assert judge([1, 2, 3, 10, 5], factor=2, window=4) == [False] * 4 + [True]
    # a non-finite norm is neither a spike nor in the window: the window is still [1, 1] at the 4th norm
    assert judge([1, 1, math.inf, NAN, 3], factor=2, window=2) == [False, False, False, False, True]


def test_the_spike_window_resumes_exactly():
    norms = [1.0, 1.2, 0.9, 30.0, 1.1, 1.0, 40.0, 1.3]
    expected = judge(norms, factor=10, window=3)
    first = GradSpike(factor=10, window=3, action="skip", device=torch.device("cpu"))
    seen = judge(norms[:4], factor=10, window=3, spike=first)
    resumed = GradSpike(factor=10, window=3, action="skip", device=torch.device("cpu"))
    resumed.load_state_dict(first.state_dict())
    seen += judge(norms[4:], factor=10, window=3, spike=resumed)
    assert seen == expected and expected.count(True) == 2 and int(resumed.spikes) == 2


@pytest.mark.parametrize("window, judged", [
    # window 2 is full at once with the newest two, [3, 1] (lower middle 1): 3 > 2 × 1 is a spike
    (2, [True, False]),
    # window 5 holds the four saved norms [1, 1, 3, 1] and needs one more before it judges: 3 enters
    # unjudged, then the median of [1, 1, 3, 1, 3] is 1 and 1 is no spike
    (5, [False, False]),
])
def test_a_resume_with_another_window_keeps_the_newest_norms_and_the_count(window, judged):
    first = GradSpike(factor=2, window=4, action="skip", device=torch.device("cpu"))
    # 9 fills the window unjudged; 3 is judged against median [1, 9, 1, 1] = 1: one spike
    assert judge([1, 1, 9, 1, 1, 3, 1], factor=2, window=4, spike=first) == [False] * 5 + [True, False]
    resumed = GradSpike(factor=2, window=window, action="skip", device=torch.device("cpu"))
    resumed.load_state_dict(first.state_dict())
    saved = [1.0, 1.0, 3.0, 1.0]
    assert int(resumed.filled) == min(4, window) and int(resumed.spikes) == 1
    assert resumed.norms[-min(4, window):].tolist() == saved[-min(4, window):]
    assert judge([3, 1], factor=2, window=window, spike=resumed) == judged


def test_a_resume_from_a_window_still_filling_keeps_only_its_finite_norms():
    first = GradSpike(factor=2, window=4, action="skip", device=torch.device("cpu"))
    judge([1, 2], factor=2, window=4, spike=first)  # two of four: nothing judged yet
    resumed = GradSpike(factor=2, window=3, action="skip", device=torch.device("cpu"))
    resumed.load_state_dict(first.state_dict())
    assert int(resumed.filled) == 2 and resumed.norms[1:].tolist() == [1.0, 2.0]
    # one more fills it unjudged; then 5 > 2 × median [1, 2, 9] = 4 is a spike
    assert judge([9, 5], factor=2, window=3, spike=resumed) == [False, True]


OUTLIER = int(epoch_order(256, seed=0, epoch=0)[5 * 32])  # in update 5's batch: the window of 4 is full by then
SPIKE = ["schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=3", "trainer.grad_spike.factor=10",
         "trainer.grad_spike.window=4"]


def outlier_data(monkeypatch, value: float | None) -> None:
    """The tiny job's synthetic data with example OUTLIER multiplied by ``value`` (None: set to NaN).
    A large negative value makes it a confidently wrong example with a large gradient (a confidently
    right one, as a large positive value gives, has almost none)."""
    build = run_module.build_dataset

    def spiked(cfg, seed, **options):
        dataset = build(cfg, seed, **options)
        x = dataset.train_x.clone()
        x[OUTLIER] = float("nan") if value is None else x[OUTLIER] * value
        return dataclasses.replace(dataset, train_x=x)

    monkeypatch.setattr(run_module, "build_dataset", spiked)


def outlier_updates(epochs: int) -> list[int]:
    return [e * 8 + b for e in range(epochs) for b in range(8)
            if OUTLIER in epoch_order(256, seed=0, epoch=e)[b * 32 : (b + 1) * 32].tolist()]


def test_a_spike_in_the_data_is_skipped_like_a_non_finite_update_and_counted(tmp_path, monkeypatch):
    expected = outlier_updates(3)
    assert expected[0] == 5 and len(expected) == 3
    with monkeypatch.context() as patch:
        outlier_data(patch, -1e3)
        metrics = train(compose_config(*SPIKE), tmp_path / "spike")
    with monkeypatch.context() as patch:
        outlier_data(patch, None)
        train(compose_config("schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=3"), tmp_path / "nan")
    assert metrics["spike_skips"] == len(expected) and metrics["skipped_updates"] == 0
    logs = read_scalars(tmp_path / "spike")
    assert [int(v) for _, v in logs["train/spike_skips"]] == [sum(b <= u for b in expected) for u in range(24)]
    # skipping the spikes leaves the same weights as skipping the same updates for a NaN
    spiked, nan = load_checkpoint(tmp_path / "spike/last.pt"), load_checkpoint(tmp_path / "nan/last.pt")
    for name, tensor in spiked["model"].items():
        assert torch.equal(tensor, nan["model"][name]), name
    assert spiked["controls"]["grad_spike"]["spikes"] == len(expected)


def test_action_log_applies_the_spike_and_counts_it(tmp_path, monkeypatch):
    outlier_data(monkeypatch, -1e3)
    metrics = train(compose_config(*SPIKE, "trainer.grad_spike.action=log", "trainer.max_epochs=1"), tmp_path)
    assert metrics["grad_spikes"] == 1 and "spike_skips" not in metrics
    logs = read_scalars(tmp_path)
    assert [int(v) for _, v in logs["train/grad_spikes"]] == [int(u >= 5) for u in range(8)]
    assert "train/spike_skips" not in logs


def test_action_stop_saves_and_stops(tmp_path, monkeypatch):
    outlier_data(monkeypatch, -1e3)
    with pytest.raises(GradSpikeStop, match="1 gradient-norm spike"):
        train(compose_config(*SPIKE, "trainer.grad_spike.action=stop"), tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["update"] == 6 and state["controls"]["grad_spike"]["spikes"] == 1  # logged every update: read after update 5
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "stopped_grad_spike"


def test_action_stop_through_the_cli_exits_4(tmp_path):
    """A user's dataset with one example scaled by -10^3 (tests/userpkg: Blobs, 6 updates an epoch)."""
    run_dir = tmp_path / "run"
    proc = run_user_cli(
        "model=wide", "data=blobs", "data.num_workers=0", "data.train._target_=userpkg.data.Outliers",
        "+data.train.outliers=[7]", "schedule.warmup_steps=3", "optimizer.lr=0.01", "trainer.max_epochs=4",
        "trainer.grad_spike.factor=10", "trainer.grad_spike.window=3", "trainer.grad_spike.action=stop",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 4, proc.stderr
    assert "gradient-norm spike" in proc.stderr and "\n" not in proc.stderr.strip().split("stopped: ", 1)[1]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "stopped_grad_spike"
    assert load_checkpoint(run_dir / "last.pt")["controls"]["grad_spike"]["spikes"] >= 1


# ---------------------------------------------------------------- weight EMA


def test_ema_equals_a_hand_computed_average_and_skipped_updates_leave_it():
    model, optimizer, schedule = linear_setup(lr=0.1, total=8)
    start = [p.detach().clone().double() for p in model.parameters()]
    ema, nonfinite = WeightEMA(model, 0.9), NonFinite("skip", device=torch.device("cpu"), world=World())
    step = make_step(model, optimizer, schedule, controls=[ema, nonfinite])
    apply_schedule(optimizer, schedule, 0)
    average = start
    for update in range(8):
        x, y = batch(seed=update)
        if update == 3:
            x = torch.full_like(x, math.nan)  # skipped: the average must not move toward the (unchanged) weights
        step([(x, y)], update)
        if update != 3:
            average = [0.9 * a + 0.1 * p.detach().double() for a, p in zip(average, model.parameters())]
    assert int(nonfinite.skipped_updates) == 1
    for got, want in zip(ema.averages, average):
        assert torch.allclose(got.double(), want, rtol=0, atol=1e-7)
        assert not torch.allclose(got.double(), start[0] if got.shape == start[0].shape else start[1])


def test_ema_validates_val_from_the_average_and_val_raw_from_the_weights(tmp_path):
    run = ["schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=3"]
    train(compose_config(*run), tmp_path / "plain")
    metrics = train(compose_config(*run, "trainer.ema_decay=0.9"), tmp_path / "ema")
    plain, ema = read_scalars(tmp_path / "plain"), read_scalars(tmp_path / "ema")
    # the EMA does not change the training: the raw weights validate exactly as without it
    assert ema["val_raw/loss"] == plain["val/loss"] and ema["val_raw/acc"] == plain["val/acc"]
    assert ema["val/loss"] != plain["val/loss"] and ema["train/loss"] == plain["train/loss"]
    assert metrics["val/loss"] == ema["val/loss"][-1][1] and metrics["val_raw/loss"] == plain["val/loss"][-1][1]
    best = min(ema["val/loss"], key=lambda point: point[1])  # best.pt follows the EMA's val/loss
    assert load_checkpoint(tmp_path / "ema/best.pt")["update"] == best[0]


@pytest.mark.parametrize("stop_after", [11, 16])
def test_ema_and_spike_window_resume_bit_identical(tmp_path, monkeypatch, stop_after):
    run = ["schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=3", "trainer.ema_decay=0.8",
           "trainer.grad_spike.factor=1.05", "trainer.grad_spike.window=3"]  # a low factor: spikes happen
    a, b = straight_and_resumed(tmp_path, monkeypatch, run, stop_after)
    spike_a, spike_b = a["controls"]["grad_spike"], b["controls"]["grad_spike"]
    assert spike_a["spikes"] > 0
    assert spike_a["filled"] == spike_b["filled"] and spike_a["spikes"] == spike_b["spikes"]
    assert torch.equal(spike_a["norms"], spike_b["norms"])
    for part_a, part_b in ((a["model"], b["model"]), (a["controls"]["ema"], b["controls"]["ema"])):
        for name, tensor in part_a.items():
            assert torch.equal(tensor, part_b[name]), name
    logs_a, logs_b = read_scalars(tmp_path / "straight"), read_scalars(tmp_path / "resumed")
    for tag in ("val/loss", "val_raw/loss", "train/loss", "train/spike_skips"):
        assert logs_a[tag] == logs_b[tag], tag


def test_ema_under_fsdp_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as error:
        validate(compose_config("trainer.strategy=fsdp", "trainer.ema_decay=0.999"))  # as the preview checks it, no launch
    assert error.value.key == "trainer.ema_decay" and "fsdp" in str(error.value)


def test_a_bad_control_value_is_one_line_and_exit_2(train_cli):
    proc, run_dir = train_cli("trainer.grad_spike.action=halt", check=False)
    assert proc.returncode == 2 and not run_dir.exists()
    assert proc.stderr.strip().count("\n") == 0 and "trainer.grad_spike.action" in proc.stderr


def test_a_vetoed_step_is_skipped_inside_the_grad_scaler():
    """The CUDA path (the skip decided on the device), run through a CPU GradScaler of scale 1 (bf16/fp32's)."""
    model, optimizer, schedule = linear_setup(lr=0.1, total=8)
    spike = GradSpike(factor=10, window=3, action="skip", device=torch.device("cpu"))
    nonfinite = NonFinite("skip", device=torch.device("cpu"), world=World())
    step = make_step(model, optimizer, schedule, controls=[spike, nonfinite])
    step.scaler = unit_grad_scaler("cpu")
    apply_schedule(optimizer, schedule, 0)
    moved = []
    for update in range(6):
        x, y = batch(seed=update)
        before = [p.detach().clone() for p in model.parameters()]
        step([(x * 1000 if update == 4 else x, y)], update)
        moved.append(any(not torch.equal(p, q) for p, q in zip(model.parameters(), before)))
    assert moved == [True, True, True, True, False, True] and int(spike.spikes) == 1
    assert int(nonfinite.skipped_updates) == 0 and step.scaler.get_scale() == 1.0


def test_a_veto_does_not_back_off_a_dynamic_loss_scale():
    """fp16's scaler halves its scale after an overflow; a spike is no overflow."""
    model, optimizer, _ = linear_setup(lr=0.1, total=8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch()
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    scaler.unscale_(optimizer)
    with vetoing(scaler, optimizer, torch.tensor(True)):
        scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0**10


# ---------------------------------------------------------------- a new control: its module and its key


def test_a_new_control_needs_only_its_module_and_its_key(tmp_path, monkeypatch):
    """docs/control-by-metrics.md's sketch, as a module the discovery finds: its key is checked
    and declared like every other, it stops the run through the protocol, and its state is saved."""
    module = types.ModuleType("trainer.controls.loss_floor")

    class LossFloor(Control):
        name = "loss_floor"

        def __init__(self, bound: float) -> None:
            self.bound, self.reads, self.validations = bound, 0, 0

        def on_read(self, read: Read) -> Stop | None:
            self.reads += 1
            losses = [record["train/loss"] for record in read.records]
            if losses and losses[-1] < self.bound:
                return Stop(f"train/loss {losses[-1]:.4g} < {self.bound} after {read.updates_done} updates")
            return None

        def after_validation(self, metrics, updates_done: int, *, last: bool) -> Stop | None:
            self.validations += 1  # the last one too, after this control ended the run
            return None

        def state_dict(self) -> dict:
            return {"reads": self.reads, "validations": self.validations}

    module.KEYS = {"loss_floor": Param(None, "stop once train/loss falls below this", float, low=0, extra=(None,))}
    module.build = lambda cfg, parts: None if cfg.trainer.loss_floor is None else LossFloor(cfg.trainer.loss_floor)
    found = controls_package.control_modules()
    monkeypatch.setattr(controls_package, "control_modules", lambda: [*found, module])

    with pytest.raises(ConfigError, match="trainer.loss_floor: got -1"):
        validate(compose_config("+trainer.loss_floor=-1"))
    run = ["schedule=constant", "optimizer.lr=0.05", "trainer.max_epochs=20", "logger.read_every_n_steps=1"]
    straight = train(compose_config(*run, "+trainer.loss_floor=null"), tmp_path / "straight")
    losses = [v for _, v in read_scalars(tmp_path / "straight")["train/loss"]]
    bound = sorted(losses)[len(losses) // 2]  # reached about half way
    first_below = next(i for i, loss in enumerate(losses) if loss < bound)
    metrics = train(compose_config(*run, f"+trainer.loss_floor={bound}"), tmp_path / "floor")
    assert straight["updates"] == 160 and metrics["updates"] == first_below + 1
    assert json.loads((tmp_path / "floor/metrics.json").read_text())["status"] == "completed"
    state, stop = load_checkpoint(tmp_path / "floor/last.pt"), first_below + 1
    checkpoints = {*range(8, stop + 1, 8), stop}  # every epoch end, and the stop: each reads first
    assert state["update"] == stop and state["controls"]["loss_floor"]["reads"] == stop + len(checkpoints)
    assert state["controls"]["loss_floor"]["validations"] == len(checkpoints)
    # At the default cadence the control sees the values at each read: every 50 updates and at each
    # epoch end (before its validation and checkpoint); it stops at the first whose last loss is below.
    default = [arg for arg in run if not arg.startswith("logger.read_every_n_steps")]
    metrics = train(compose_config(*default, f"+trainer.loss_floor={bound}"), tmp_path / "default")
    reads = sorted({*range(8, 161, 8), *range(50, 161, 50)})
    assert metrics["updates"] == next(r for r in reads if losses[r - 1] < bound) < 160
