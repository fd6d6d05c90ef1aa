"""Keys that are each valid and cannot work together, through the real CLI: one line naming the
key, exit code 2 and nothing written, before any training (:mod:`trainer.app.combinations` and the
checks beside the code that reads each key). Before, each was a traceback after training started,
or a run that reported "completed" having done something else than asked."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import QUIET, TINY, run_cli
from tests.test_bad_input import assert_one_line_error

#: A regression: float targets, MSE, a model of one output; validation gives val/loss alone.
REGRESSION = [
    *QUIET, "data=torch_dataset", "+data.train._target_=tests.userpkg.odd.regression", "+data.train.size=64",
    "data.batch_size=16", "model=target", "+model._target_=tests.userpkg.odd.Linear", "loss._target_=torch.nn.MSELoss",
    "trainer.max_epochs=2",
]
WITH_VAL = ["+data.val._target_=tests.userpkg.odd.regression", "+data.val.size=16", "+data.val.seed=1"]
#: TINY runs 2 epochs of 8 updates: updates 0..15. The MLP's modules with parameters are 1 and 4.
RUN = [*TINY, "trainer.max_epochs=2"]

CASES = {
    "val/acc watched on a regression": (
        [*REGRESSION, *WITH_VAL, "trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/acc",
         "trainer.early_stopping.mode=max"],
        "trainer.early_stopping.monitor", "validation gives val/loss, not val/acc"),
    "a plateau on val/acc of a regression": (
        [*REGRESSION, *WITH_VAL, "schedule=plateau", "schedule.monitor=val/acc", "schedule.mode=max"],
        "schedule.monitor", "validation gives val/loss, not val/acc"),
    "early stopping without validation": (
        [*REGRESSION, "trainer.early_stopping.patience=2"],
        "trainer.early_stopping.monitor", "the data has no validation split"),
    "a plateau chain phase without validation": (
        [*REGRESSION, "schedule=chain", "schedule.phases=[{name: constant, fraction: 0.5}, {name: plateau}]"],
        "schedule.phases.1.monitor", "the data has no validation split"),
    "val/acc with mode=min": (
        [*RUN, "trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/acc"],
        "trainer.early_stopping.mode", "set trainer.early_stopping.mode=max"),
    "a plateau on val/loss with mode=max": (
        [*RUN, "schedule=plateau", "schedule.mode=max"], "schedule.mode", "set schedule.mode=min"),
    "every parameter frozen at update 0": (
        [*RUN, "trainer.unfreeze=[{at: 4, modules: ['1']}, {at: 8, modules: ['4']}]"],
        "trainer.unfreeze", "the first stage joins at update 4"),
    "an unfreeze stage after the last update": (
        [*RUN, "trainer.unfreeze=[{at: 16, modules: ['1']}]"],
        "trainer.unfreeze.0.at", "joins at update 16, but the run's last update is 15"),
    "a spike window longer than the run": (
        [*RUN, "trainer.grad_spike.factor=10", "trainer.grad_spike.window=16"],
        "trainer.grad_spike.window", "set a window below 16"),
    "a module twice in layer_order": (
        [*RUN, "optimizer.layer_decay=0.5", "optimizer.layer_order=['1','4','1']"],
        "optimizer.layer_order", "1 is listed at depths 0 and 2"),
    "a param_groups rule shadowed by an earlier one": (
        [*RUN, "optimizer.param_groups=[{match: '*weight', lr_scale: 0.5}, {match: '1.weight', lr_scale: 0.1}]"],
        "optimizer.param_groups.1.match", "matches only parameters that rule(s) [0] took first"),
    "a loss no gradient flows back from": (
        [*RUN, "model=target", "+model._target_=tests.userpkg.odd.Detached"],
        "model", "depends on no parameter that trains"),
    "a model builder that calls sys.exit": (
        [*RUN, "model=target", "+model._target_=tests.userpkg.odd.exiting"],
        "model", "called sys.exit('no weights here')"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_combination_that_cannot_work_is_one_line_before_anything_is_written(tmp_path, case):
    overrides, key, text = CASES[case]
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*overrides, f"hydra.run.dir={run_dir}"], check=False)
    assert_one_line_error(proc, key)
    assert text in proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("overrides", [
    [*REGRESSION, *WITH_VAL, "trainer.early_stopping.patience=2", "schedule=plateau"],  # val/loss is there
    [*REGRESSION],  # no validation, and nothing watches it
    [*RUN, "trainer.unfreeze=[{at: 15, modules: ['1']}]", "trainer.grad_spike.factor=10",
     "trainer.grad_spike.window=15", "optimizer.param_groups=[{match: '1.weight', lr_scale: 0.1}, {match: '*weight'}]"],
    # a run in parts: this part stops at update 8 of a 16-update schedule; the stage joins in the next
    [*RUN, "trainer.max_steps=8", "schedule=cosine", "schedule.total_steps=16", "trainer.unfreeze=[{at: 12, modules: ['1']}]"],
])
def test_the_same_keys_where_they_can_work_train(tmp_path, overrides):
    """The checks' edges: each refused case above, one step inside what works."""
    run_dir = tmp_path / "run"
    run_cli("trainer", [*overrides, f"hydra.run.dir={run_dir}"])
    assert (run_dir / "last.pt").is_file()


def test_init_from_weights_that_are_not_finite_is_refused(tmp_path):
    """Before: exit 0, "run completed", every update skipped as non-finite."""
    source = tmp_path / "diverged"
    run_cli("trainer", [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={source}"])
    weights = torch.load(source / "last.pt", weights_only=True)["model"]
    weights["4.bias"][1] = float("inf")
    torch.save(weights, tmp_path / "weights.pt")
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [*RUN, f"trainer.init_from={tmp_path / 'weights.pt'}", f"hydra.run.dir={run_dir}"],
                   check=False)
    assert_one_line_error(proc, "trainer.init_from")
    assert "non-finite values (NaN or inf) in 4.bias" in proc.stderr
    assert not run_dir.exists()
