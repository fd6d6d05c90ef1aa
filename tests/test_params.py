"""One declaration per parameter: conf/ agrees with it, the checks follow it, the Python API uses it.

The expectations come from the declarations themselves (``trainer.params.Param``): a value below
``low``, above ``high``, outside ``choices`` or of another type must be refused with one
ConfigError naming the key, and the YAML must hold exactly the declared keys at their defaults.
"""

from __future__ import annotations

import copy
import math

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, compose_config
from trainer.config import validate
from trainer.errors import ConfigError
from trainer.params import Param, check_params
from trainer.schedules import COMMON, COMMON_KEYS, build_schedule, schedule_names, schedule_params


def wrong_values(param: Param) -> list:
    """Values the declaration refuses: out of its range, outside its choices, of another type."""
    out: list = [] if None in param.extra else [None]
    if param.kind in (int, float):
        out += ["abc", True, math.inf, [1]]
        if param.low is not None:
            out.append(param.low if param.low_open else param.low - 1)
        if param.high is not None:
            out.append(param.high if param.high_open else param.high + 1)
        if param.kind is int:
            out.append(1.5)
    elif param.kind is bool:
        out += ["off", "maybe", 1, 0]
    elif param.kind is str:
        out += [1, True, "no_such_choice"]
    elif param.kind is list:
        out += [5, "[1]", [1.5], ["a"]]
        if param.low is not None:
            out.append([param.low - 1])
        if param.increasing:
            out.append([3, 2])
    return out


SCHEDULE_PARAMS = [(name, key) for name in schedule_names() for key in schedule_params(name)]


def own_keys(schedule_cfg) -> dict:
    return {k: v for k, v in OmegaConf.to_container(schedule_cfg).items() if k not in COMMON_KEYS}


def as_plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name", schedule_names())
def test_schedule_yaml_holds_exactly_the_declared_parameters_at_their_defaults(name):
    cfg = compose_config(f"schedule={name}", base=[])
    declared = {key: as_plain(p.default) for key, p in schedule_params(name).items()}
    assert own_keys(cfg.schedule) == declared


def test_schedule_common_yaml_holds_the_common_declarations():
    common = OmegaConf.to_container(OmegaConf.load(REPO / "conf/schedule_common.yaml"))
    assert common == {key: p.default for key, p in COMMON.items()}


def test_every_schedule_parameter_has_values_it_refuses():
    for name, key in SCHEDULE_PARAMS:
        assert len(wrong_values(schedule_params(name)[key])) >= 3, (name, key)


@pytest.mark.parametrize("name", schedule_names())
def test_every_schedule_parameter_refuses_what_its_declaration_excludes(name):
    base = compose_config(f"schedule={name}", "trainer.max_epochs=50")
    validate(base)  # the defaults themselves pass
    for key, param in schedule_params(name).items():
        for value in wrong_values(param):
            cfg = copy.deepcopy(base)
            OmegaConf.update(cfg, f"schedule.{key}", value)
            with pytest.raises(ConfigError) as error:
                validate(cfg)
            assert error.value.key == f"schedule.{key}", (key, value)
            assert str(error.value).startswith(f"schedule.{key}: got ")
            assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", schedule_names())
def test_python_defaults_give_the_yaml_schedule(name):
    """A schedule built from its name alone (the Python API) equals the one the YAML composes."""
    cfg = compose_config(f"schedule={name}", base=[]).schedule
    cfg.interval, cfg.warmup_steps = "step", 8 if name == "inverse_sqrt" else 0
    bare = OmegaConf.create({key: cfg[key] for key in COMMON_KEYS})
    kwargs = {"peak_lr": 0.1, "total_steps": 1000, "updates_per_epoch": 1}
    from_yaml, from_defaults = build_schedule(cfg, **kwargs), build_schedule(bare, **kwargs)
    updates = range(0, 1000, 7)
    assert [from_defaults.lr(u) for u in updates] == [from_yaml.lr(u) for u in updates]


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        ({"flag": "off"}, "x.flag", "got 'off'; expected true or false"),
        ({"flag": 1}, "x.flag", "got 1; expected true or false"),
        ({"steps": True}, "x.steps", "got true; expected an integer >= 1"),
        ({"steps": 2.0}, "x.steps", "got 2.0; expected an integer >= 1"),
        ({"rate": math.nan}, "x.rate", "expected a finite number > 0 and < 1 or null"),
        ({"sizes": 5}, "x.sizes", "got 5; expected a list of integers >= 1, e.g. [128]"),
        ({"sizes": [0]}, "x.sizes", "got [0]; expected a list of integers >= 1"),
        ({"shape": "round"}, "x.shape", "got 'round'; expected one of cos, linear"),
        ({"stpes": 3}, "x.stpes", "not a parameter of thing; did you mean steps?"),
        ({"zzz": 3}, "x.zzz", "not a parameter of thing; it takes flag, rate, shape, sizes, steps"),
    ],
)
def test_param_messages_say_what_was_given_and_what_is_expected(values, key, message):
    params = {
        "flag": Param(True, "", bool),
        "steps": Param(1, "", int, low=1),
        "rate": Param(None, "", float, low=0, low_open=True, high=1, high_open=True, extra=(None,)),
        "sizes": Param((128,), "", list, item=int, low=1),
        "shape": Param("cos", "", str, choices=("cos", "linear")),
    }
    with pytest.raises(ConfigError) as error:
        check_params(params, values, "x", owner="thing")
    assert error.value.key == key
    assert message in str(error.value)
