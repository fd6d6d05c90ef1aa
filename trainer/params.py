"""One declaration per parameter: default, type, range or choices, and a one-line doc.

A component (a schedule, a model builder, the optimizer, the trainer's own keys) declares each of
its keys once as a :class:`Param`, next to the code that reads it. The config checks
(:func:`check_params`), the defaults a Python caller gets, and the test that compares them with
``conf/`` all read that one declaration, so they cannot disagree.

Values arrive as Hydra parses the command line: ``off`` and ``maybe`` are strings, ``5`` is an
int, ``[5]`` a list. Nothing is coerced: a string where a boolean is declared is an error, not
true.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from trainer.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_TYPE_WORDS = {
    bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "a mapping",
}


@dataclass(frozen=True)
class Param:
    """A key's default, its type and bounds, and a one-line doc with its units.

    ``kind``: ``bool``, ``int``, ``float`` (ints are accepted), ``str``, ``list`` (of ``item``; a
    ``dict`` item is any mapping, checked by its owner) or ``dict`` (names to ``item``; with
    ``fields``, one record of those keys, and with ``open_record`` any others too). ``low``/``high`` bound a number, or every item of a list or
    dict; ``choices`` lists the only values allowed (a ``str``'s, say); ``extra`` holds values
    accepted besides the typed ones (``None`` for "null = off", ``"auto"``); ``or_mapping``: a
    mapping is accepted too, its keys checked by the owner (a schedule named with its parameters,
    ``{name: wsd, decay_steps: 200}``, where a name alone would do).
    """

    default: Any
    doc: str
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    extra: tuple[Any, ...] = ()
    item: type = int
    length: int | None = None  # a list's exact length
    increasing: bool = False  # a list's items strictly increase
    min_items: int = 0
    fields: Mapping[str, Param] | None = None  # a list of records (``item=dict``), or a record (``dict``): its keys
    open_record: bool = False  # a record (``dict`` with ``fields``) that takes undeclared keys too, as they are
    or_mapping: bool = False

    def check(self, value: Any, key: str) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless ``value`` is allowed."""
        if any(_same(value, v) for v in self.extra) or self.or_mapping and isinstance(value, Mapping):
            return
        if self.kind is list and self.fields is not None:
            ok = _is_list(value)
            if ok:
                for index, record in enumerate(value):
                    self._check_record(record, f"{key}.{index}")
        elif self.kind is dict and self.fields is not None:
            ok = True
            self._check_record(value, key)
        elif self.kind is list:
            ok = _is_list(value) and self._list_ok(list(value))
        elif self.kind is dict:
            ok = isinstance(value, Mapping)
            if ok:
                for name, item in value.items():
                    self._item_param().check(item, f"{key}.{name}")
        else:
            ok = self._scalar_ok(value, self.kind)
        if not ok:
            raise ConfigError(key, f"got {_show(value)}; expected {self.expected()}")

    def _check_record(self, record: Any, key: str) -> None:
        """One item of a list of records: a mapping of declared fields, the required ones present."""
        assert self.fields is not None
        if not isinstance(record, Mapping):
            raise ConfigError(key, f"got {_show(record)}; expected a mapping with keys {_field_words(self.fields)}")
        missing = [name for name, field in self.fields.items() if field.default is REQUIRED and name not in record]
        one = self.kind is dict
        if missing:
            raise ConfigError(f"{key}.{missing[0]}", f"missing; {'it' if one else 'each item'} takes "
                              f"{_field_words(self.fields)}{' and any other key' if self.open_record else ''}")
        declared_part = {k: v for k, v in record.items() if k in self.fields or not self.open_record}
        check_params(self.fields, declared_part, key, owner=key if one else key.rsplit(".", 1)[0] + " items")

    def expected(self) -> str:
        """What the value must be, in words: the second half of every error message."""
        if self.fields is not None:
            what = "a mapping" if self.kind is dict else "a list of mappings"
            return f"{what} with keys {_field_words(self.fields)}" + (" and any other" if self.open_record else "") + \
                "".join(f" or {_show(v)}" for v in self.extra)
        if self.kind is list:
            what = f"a list of {self.length or ''} {_plural(self._item_words())}".replace("  ", " ")
            if self.increasing:
                what += ", strictly increasing"
            if self.min_items:
                what += f", at least {self.min_items}"
            if self.default and self.default is not REQUIRED:
                what += f", e.g. {_show(self.default)}"
        elif self.kind is dict:
            # A number's example; strings (paths, tokens) are shown by each key's own doc.
            what = f"names mapped to {_plural(self._item_words())}" + ("" if self.item is str else ", e.g. {layer1: 0.1}")
        elif self.choices:
            what = "one of " + ", ".join(c if isinstance(c, str) else _show(c) for c in self.choices)
        else:
            what = self._item_words(self.kind)
        for value in self.extra:
            what += f" or {_show(value)}"
        return what + (" or a mapping" if self.or_mapping else "")

    def _item_words(self, kind: type | None = None) -> str:
        kind = kind or self.item
        words = _TYPE_WORDS[kind]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        return words + (" " + " and ".join(bounds) if bounds else "")

    def _item_param(self) -> Param:
        return Param(None, self.doc, self.item, self.low, self.high, self.low_open, self.high_open)

    def _scalar_ok(self, value: Any, kind: type) -> bool:
        if self.choices:
            return any(_same(value, c) for c in self.choices)
        if kind is bool or kind is str:
            return type(value) is kind
        if kind is dict:
            return isinstance(value, Mapping)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def _list_ok(self, items: list[Any]) -> bool:
        if self.length is not None and len(items) != self.length:
            return False
        if len(items) < self.min_items or not all(self._scalar_ok(i, self.item) for i in items):
            return False
        return not self.increasing or all(a < b for a, b in zip(items, items[1:]))


#: The default of a record's field that must be given (see ``Param.fields``).
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "required"})()


def _field_words(fields: Mapping[str, Param]) -> str:
    """``at (required), modules (required), lr_scale``: a record's keys."""
    return ", ".join(name + (" (required)" if field.default is REQUIRED else "") for name, field in fields.items())


def defaults_of_record(fields: Mapping[str, Param], record: Mapping[str, Any]) -> dict[str, Any]:
    """A checked record with every optional field filled in from its default."""
    return {**{name: field.default for name, field in fields.items() if field.default is not REQUIRED}, **record}


def _same(value: Any, allowed: Any) -> bool:
    """Equal and of the same type: YAML's 1 is not true, and true is not 1."""
    return type(value) is type(allowed) and value == allowed


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _show(value: Any) -> str:
    """A value as the user would type it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_list(value):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _plural(words: str) -> str:
    for one, many in (("an integer", "integers"), ("a finite number", "finite numbers"), ("a string", "strings"),
                      ("a mapping", "mappings")):
        if words.startswith(one):
            return many + words[len(one):]
    return words


def declare(**params: Param) -> Callable[[F], F]:
    """Declare a function's keyword-only parameters: the declared defaults become its defaults
    (so Python callers get the same values as the config) and :func:`declared` returns them.

    A builder named by a config (``model.name``, or a ``_target_``) is checked against these
    before it is called.
    """

    def attach(fn: F) -> F:
        kwonly = {p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if not set(params) <= kwonly:
            raise TypeError(f"{fn.__name__} does not take {sorted(set(params) - kwonly)} as keyword-only arguments")
        fn.__kwdefaults__ = {**(fn.__kwdefaults__ or {}), **defaults(params)}
        fn.__params__ = MappingProxyType(dict(params))  # type: ignore[attr-defined]
        return fn

    return attach


def declared(fn: Callable[..., Any]) -> Mapping[str, Param]:
    """The parameters :func:`declare` attached to ``fn`` (empty if none)."""
    return getattr(fn, "__params__", MappingProxyType({}))


def defaults(params: Mapping[str, Param]) -> dict[str, Any]:
    """Every declared key with its default."""
    return {name: p.default for name, p in params.items()}


def check_params(params: Mapping[str, Param], values: Mapping[str, Any], prefix: str, *, owner: str) -> None:
    """Check every key of ``values`` against its declaration; a key nothing declares is an error
    that names the close match, e.g. ``schedule.min_Lr`` -> ``min_lr``, unless ``values`` names a
    ``_target_``, whose own arguments are its signature's business.

    ``prefix`` is the config path (``schedule``), ``owner`` says who takes the keys in the
    message (``schedule 'cosine'``).
    """
    for key, value in values.items():
        key = str(key)
        if key not in params:
            if "_target_" in values:  # the target's own arguments: its signature decides
                continue
            raise ConfigError(f"{prefix}.{key}", unknown_key_message(key, list(params), owner))
        params[key].check(value, f"{prefix}.{key}")


def unknown_key_message(key: str, known: Sequence[str], owner: str) -> str:
    """``not a parameter of OWNER; did you mean X?`` (or the list of what it takes)."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"not a parameter of {owner}; did you mean {close[0]}?"
    return f"not a parameter of {owner}; it takes {', '.join(sorted(known)) or 'none'}"
