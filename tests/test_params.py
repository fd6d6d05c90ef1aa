"""One declaration per parameter: conf/ agrees with it, the checks follow it, the Python API uses it.

The expectations come from the declarations themselves (``trainer.params.Param``): a value below
``low``, above ``high``, outside ``choices`` or of another type must be refused with one
ConfigError naming the key, and the YAML must hold exactly the declared keys at their defaults.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import trainer
from tests.conftest import REPO, compose_config
from trainer.app.build import build_for_preview
from trainer.app.validate import SEED, trainer_params, validate
from trainer.components import locate, shipped_targets
from trainer.data import LOOP_PARAMS, SEQUENCE_DATA
from trainer.errors import ConfigError
from trainer.optim.factory import optimizer_params
from trainer.params import Param, check_params, declared
from trainer.rundir.writers import LOGGER, writer_nodes
from trainer.schedules.registry import COMMON, COMMON_KEYS, build_schedule, schedule_names, schedule_params, spec_of


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
        out += [1, True, [1]] + (["no_such_choice"] if param.choices else [])
    elif param.kind is dict:
        out += [5, [1], {"layer1": 0}, {"layer1": "a"}]
    elif param.kind is list:
        out += [5, "[1]"] + ([[1], [True]] if param.item is str else [[1.5], ["a"]])
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


@pytest.mark.parametrize("name", schedule_names())
def test_schedule_yaml_holds_its_own_common_defaults(name):
    """warmup_cosine's 100-update warmup, step's epochs: declared with the schedule, not only in YAML."""
    cfg = compose_config(f"schedule={name}", base=[]).schedule
    assert {key: cfg[key] for key in COMMON} == spec_of(name).common_defaults


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
            OmegaConf.update(cfg, f"schedule.{key}", value, merge=False)
            with pytest.raises(ConfigError) as error:
                validate(cfg)
            assert error.value.key == f"schedule.{key}", (key, value)
            assert str(error.value).startswith(f"schedule.{key}: got ")
            assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", schedule_names())
def test_the_declarations_alone_give_the_yaml_schedule_exactly(name):
    """A schedule bound from its name and declared defaults (common keys included) equals, at every
    update and bit for bit, the one ``schedule=NAME`` composes from YAML."""
    from_yaml = compose_config(f"schedule={name}", base=[]).schedule
    bare = OmegaConf.create({"name": name, **spec_of(name).common_defaults})
    kwargs = {"peak_lr": 0.1, "total_steps": 1000, "updates_per_epoch": 7, "warmup_steps": None}
    a, b = build_schedule(from_yaml, **kwargs), build_schedule(bare, **kwargs)
    assert a.interval == b.interval and [a.lr(u) for u in range(0, 7000, 3)] == [b.lr(u) for u in range(0, 7000, 3)]


@pytest.mark.parametrize("name", [n for n in schedule_names() if not spec_of(n).metric_driven])
def test_the_python_api_with_only_a_name_gives_the_yaml_schedule(name):
    """``trainer.lr_scheduler(optimizer, NAME, total_steps=T)``, every other parameter left out (the
    warmup too), gives the LR of every update that ``schedule=NAME`` gives a run of T updates."""
    run = compose_config(f"schedule={name}", "schedule.interval=step", "trainer.max_steps=1000", "optimizer.lr=0.1")
    _, from_yaml, plan = build_for_preview(run)  # 1000 updates (the range test's own default length: 200)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = trainer.lr_scheduler(optimizer, name, total_steps=plan.max_updates)
    seen = []
    for _ in range(plan.max_updates):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # LambdaLR applies lr(t) as η × (lr(t) / η): two roundings, a few ulps at most.
    assert seen == pytest.approx([from_yaml.lr(update) for update in range(plan.max_updates)], rel=1e-14, abs=0)


def _model_overrides(name):
    return [f"model={name}", "data=shakespeare_char"] if name == "gpt" else [f"model={name}", "data=fashion_mnist"]


#: (node, overrides that select it, its declarations) for every component but the schedules.
NODES = [
    ("trainer", [], trainer_params()[0]),
    *[(f"trainer.{node}", [], params) for node, params in trainer_params()[1].items()],
    ("logger", [], LOGGER),
    *[(f"logger.{node}", [], params) for node, params in writer_nodes().items()],
    *[("optimizer", [f"optimizer={name}"], optimizer_params(name)) for name in ("adamw", "sgd")],
    *[("model", _model_overrides(name), declared(locate(target, "model")))
      for name, target in sorted(shipped_targets("model").items())],
]
NODE_IDS = [" ".join(overrides) or node for node, overrides, _ in NODES]


@pytest.mark.parametrize(("node", "overrides", "params"), NODES, ids=NODE_IDS)
def test_component_yaml_holds_exactly_the_declared_keys_at_their_defaults(node, overrides, params):
    cfg = OmegaConf.to_container(OmegaConf.select(compose_config(*overrides, base=[]), node))
    for inner in {n for n, _, _ in NODES if n.startswith(f"{node}.")}:  # declared as nodes of their own
        cfg.pop(inner.rpartition(".")[2])
    cfg.pop("name", None)
    cfg.pop("_target_", None)  # what builds it, not one of its parameters
    assert cfg == {key: as_plain(p.default) for key, p in params.items()}


@pytest.mark.parametrize(("node", "overrides", "params"), NODES, ids=NODE_IDS)
def test_every_component_key_refuses_what_its_declaration_excludes(node, overrides, params):
    base = compose_config(*overrides, base=[])
    validate(base)
    for key, param in params.items():
        for value in wrong_values(param):
            cfg = copy.deepcopy(base)
            OmegaConf.update(cfg, f"{node}.{key}", value, merge=False)
            with pytest.raises(ConfigError) as error:
                validate(cfg)
            assert error.value.key.startswith(f"{node}.{key}"), (key, value, str(error.value))
            assert "\n" not in str(error.value)


@pytest.mark.parametrize(("name", "target"), sorted(shipped_targets("data").items()))
def test_a_shipped_data_yaml_gives_its_builder_exactly_its_declared_keys_at_their_defaults(name, target):
    model = ["model=gpt"] if name in SEQUENCE_DATA else []  # data.block_size follows model.block_size
    cfg = OmegaConf.to_container(compose_config(f"data={name}", *model, base=[]).data, resolve=True)
    own = {k: v for k, v in cfg.items() if k not in ("_target_", "name", *LOOP_PARAMS)}
    assert own == {key: as_plain(p.default) for key, p in declared(locate(target, "data")).items()}


def test_seed_is_declared_as_in_config_yaml():
    base = compose_config(base=[])
    assert base.seed == SEED.default
    for value in wrong_values(SEED):
        cfg = copy.deepcopy(base)
        cfg.seed = value
        with pytest.raises(ConfigError, match="^seed: got "):
            validate(cfg)


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


# --- property: a value of another type than the declared one, for every declared key ----------

_TEXT = st.text("abcdefghijklmnopqrstuvwxyz_ /.", min_size=1, max_size=12)
_NUMBERS = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True))
_OF_KIND = {
    bool: st.booleans(),
    int: st.integers(-10**6, 10**6),
    float: st.floats(allow_nan=True, allow_infinity=True),  # 2.0 too: an int key refuses it
    str: _TEXT,
    list: st.lists(_NUMBERS, max_size=3),
    dict: st.dictionaries(st.sampled_from(["layer1", "fc"]), _NUMBERS, max_size=2),
}


def other_types(param: Param):
    """Values whose type is not the declared one (ints are numbers to a float key, so not "other")."""
    kinds = [k for k in _OF_KIND if k is not param.kind and not (param.kind is float and k is int)]
    values = st.one_of(*(_OF_KIND[k] for k in kinds))
    return values.filter(lambda v: not any(type(v) is type(e) and v == e for e in param.extra))


ALL_KEYS = [
    *[(f"schedule={name}", "schedule", key, p) for name in schedule_names() for key, p in schedule_params(name).items()],
    *[("", "schedule", key, p) for key, p in COMMON.items()],
    *[(" ".join(overrides), node, key, p) for node, overrides, params in NODES for key, p in params.items()],
]
_BASES: dict[str, object] = {}


def _base(overrides: str):
    if overrides not in _BASES:
        _BASES[overrides] = compose_config(*overrides.split(), "trainer.max_epochs=50", base=[])
    return _BASES[overrides]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_KEYS).flatmap(lambda entry: st.tuples(st.just(entry), other_types(entry[3]))))
def test_a_value_of_another_type_for_any_declared_key_is_one_error_naming_it(entry_and_value):
    (overrides, node, key, _), value = entry_and_value
    cfg = copy.deepcopy(_base(overrides))
    OmegaConf.update(cfg, f"{node}.{key}", value, merge=False)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert error.value.key.startswith(f"{node}.{key}"), str(error.value)
    assert str(error.value).startswith(f"{error.value.key}: got ") and "\n" not in str(error.value)
