"""trainer.compile: torch.compile'd training matches eager training, and checkpoints stay interchangeable."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_config
from trainer.app.run import train
from trainer.rundir.checkpoint import load_checkpoint


def test_compiled_run_matches_eager_and_its_checkpoint_loads_into_an_eager_run(tmp_path):
    # fp32 on the CPU: on a GPU, bf16 rounds differently in fused and eager kernels.
    overrides = ["schedule=cosine", "optimizer.lr=0.01", "trainer.max_epochs=2", "trainer.device=cpu"]
    eager = train(compose_config(*overrides), tmp_path / "eager")
    compiled = train(compose_config(*overrides, "trainer.compile=true"), tmp_path / "compiled")
    # Inductor fuses kernels, so the arithmetic may round differently; nothing else differs.
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-4)
    a = load_checkpoint(tmp_path / "eager" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "compiled" / "last.pt")["model"]
    assert list(a) == list(b)  # no "_orig_mod." prefix: the module was compiled in place
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
    # an eager run resumes the compiled run's checkpoint (it is already finished: it only evaluates)
    resumed = train(compose_config(*overrides, f"trainer.resume={tmp_path / 'compiled' / 'last.pt'}"), tmp_path / "r")
    assert resumed["val/loss"] == pytest.approx(compiled["val/loss"], rel=1e-6)


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_schedule_never_recompiles_the_model(tmp_path, epochs):
    """onecycle changes the LR and momentum every update; they live in the optimizer, outside the
    compiled module, so a run compiles the same two graphs (train and eval mode) however long it is."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    train(compose_config("schedule=onecycle", "optimizer=sgd", f"trainer.max_epochs={epochs}", "trainer.compile=true"),
          tmp_path)
    assert counters["stats"]["unique_graphs"] == 2
    assert counters["frames"]["total"] == counters["frames"]["ok"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_validate_with_test_time_flips(tmp_path):
    """reduce-overhead replays CUDA graphs, whose second call (the mirrored inputs) reuses the
    first call's output memory; the flipped evaluation must still score like eager's."""
    overrides = ["trainer.device=cuda", "+data.flip_test=true", "schedule=cosine", "optimizer.lr=0.01",
                 "trainer.max_epochs=2"]
    eager = train(compose_config(*overrides), tmp_path / "eager")
    graphed = train(compose_config(*overrides, "trainer.compile=reduce-overhead"), tmp_path / "graphed")
    assert graphed["val/loss"] == pytest.approx(eager["val/loss"], rel=2e-2)
