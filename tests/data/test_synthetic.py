"""The synthetic task: its config, determinism from the seed, shapes, and that it can be learned."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trainer.data import build_dataset, check_data, data_spec
from trainer.data.source import DataSpec
from trainer.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "data" / "synthetic.yaml"


def synthetic_cfg(**overrides):
    cfg = OmegaConf.load(CONF)
    cfg.update(overrides)
    del cfg["defaults"]  # data_common's keys: not read by the synthetic source
    return cfg


def test_config_defaults():
    cfg = synthetic_cfg()
    assert OmegaConf.to_container(cfg) == {
        "_target_": "trainer.data.synthetic.synthetic", "name": "synthetic", "train_size": 2048, "val_size": 512,
        "batch_size": 64,
        "num_classes": 4, "num_features": 16, "noise": 0.1,
    }
    assert data_spec(cfg) == DataSpec((16,), 4, 2048)


def test_shapes_dtypes_and_labels():
    data = build_dataset(synthetic_cfg(train_size=300, val_size=100, num_features=5, num_classes=3), seed=0)
    assert data.train_x.shape == (300, 5) and data.val_x.shape == (100, 5)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.train_y.shape == (300,) and data.val_y.shape == (100,)
    assert data.num_classes == 3 and data.input_shape == (5,)
    assert set(data.train_y.tolist()) == {0, 1, 2} and set(data.val_y.tolist()) == {0, 1, 2}
    # x ~ N(0, 1): with 1500 draws the mean and std are within a few percent of 0 and 1.
    assert data.train_x.mean().item() == pytest.approx(0.0, abs=0.1)
    assert data.train_x.std().item() == pytest.approx(1.0, abs=0.1)


def test_deterministic_per_seed_and_independent_of_the_global_rng():
    cfg = synthetic_cfg()
    torch.manual_seed(0)
    a = build_dataset(cfg, seed=7)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    b = build_dataset(cfg, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = build_dataset(cfg, seed=8)
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.train_y, c.train_y)
    assert not torch.equal(a.train_x[: len(a.val_x)], a.val_x)  # the splits are different draws


def test_a_linear_model_learns_it_far_above_chance():
    data = build_dataset(synthetic_cfg(), seed=0)
    # Least squares onto one-hot labels: a linear classifier fit in closed form.
    targets = torch.nn.functional.one_hot(data.train_y, data.num_classes).float()
    w = torch.linalg.lstsq(data.train_x, targets).solution
    accuracy = ((data.val_x @ w).argmax(1) == data.val_y).float().mean().item()
    assert accuracy > 0.8  # chance is 0.25; the labels come from a linear teacher with small noise


@pytest.mark.parametrize(
    ("key", "value"),
    [("train_size", 0), ("val_size", 0), ("num_classes", 1), ("num_features", 0), ("train_size", 2.5),
     ("noise", -0.1), ("noise", "high")],
)
def test_bad_values_are_config_errors_naming_the_key(key, value):
    cfg = synthetic_cfg(**{key: value})
    with pytest.raises(ConfigError, match=f"data.{key}: got {value!r}; expected") as error:
        check_data(cfg)  # the check validate runs before anything is generated
    assert error.value.key == f"data.{key}"


def test_name_labels_the_run_and_the_target_builds():
    assert build_dataset(synthetic_cfg(name="my_label", train_size=8), seed=0).num_train == 8


def test_a_config_without_target_lists_the_shipped_sources():
    cfg = synthetic_cfg(name="imagenet")
    del cfg["_target_"]
    with pytest.raises(ConfigError, match="missing: pick a shipped data .data=cifar10 | fashion_mnist | "
                                          "shakespeare_char | synthetic.") as error:
        check_data(cfg)
    assert error.value.key == "data._target_"
