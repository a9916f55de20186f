"""Type conversion and value checks of :mod:`ferfast.config`: a setting's text (or file value) to its field's type,
and the range checks that the sections' ``validate`` and the engine's run settings share.

No torch, no :mod:`ferfast.data`: ``import ferfast.config`` stays light for the CLI's ``--help``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0"})
_NONE = frozenset({"none", "null", "~", ""})


class ConfigError(ValueError):
    """A bad config key or value; ``key`` is the dotted key (``"stage1.optim.lr"``), ``problem`` the reason."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


# -- type conversion ------------------------------------------------------------------------------


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = _hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _describe(tp: Any) -> str:
    """The expected type in words, for error messages and ``--help``."""
    args = _union_args(tp)
    if args is not None:
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return f"a comma-separated list of {_describe(items[0])}s"
        return f"{len(items)} comma-separated values ({', '.join(_describe(i) for i in items)})"
    return {
        int: "an integer",
        float: "a number",
        bool: "a boolean (true/false, yes/no, 1/0)",
        str: "a string",
        Path: "a path",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _bad(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(key, f"expected {_describe(tp)}, got {value!r}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from a file, a keyword argument or a command-line string) converted to the field type ``tp``."""
    if tp is Any:
        return value
    args = _union_args(tp)
    if args is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE and type(None) in args):
            if type(None) in args:
                return None
            raise _bad(key, tp, value)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise _bad(key, tp, value)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and value.strip() == str(choice)):
                return choice
        raise ConfigError(key, f"expected one of {', '.join(str(c) for c in choices)}, got {value!r}")
    if origin is tuple:
        items = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip().strip("()[]").strip()
            parts: list[Any] = [p.strip() for p in text.split(",")] if text else []
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise _bad(key, tp, value)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_coerce(p, items[0], f"{key}[{i}]") for i, p in enumerate(parts))
        if len(parts) != len(items):
            raise _bad(key, tp, value)
        return tuple(_coerce(p, t, f"{key}[{i}]") for i, (p, t) in enumerate(zip(parts, items)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(key, tp, value)
    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, tp, value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _bad(key, tp, value)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(key, tp, value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _bad(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(key, tp, value)
    if tp is Path:
        if isinstance(value, (str, os.PathLike)) and str(value).strip():
            return Path(os.path.expanduser(str(value).strip()))
        raise _bad(key, tp, value)
    raise ConfigError(key, f"fields of type {tp!r} are not supported by ferfast.config")


# -- value checks ---------------------------------------------------------------------------------


def _check(ok: bool, key: str, problem: str, value: Any) -> None:
    if not ok:
        raise ConfigError(key, f"{problem}, got {value!r}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value is None or value > 0, name, "must be > 0", value)


def _nonnegative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value is None or value >= 0, name, "must be >= 0", value)


def _in_unit(obj: Any, name: str, *, low_open: bool, high_open: bool) -> None:
    value = getattr(obj, name)
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    _check(lo_ok and hi_ok, name, f"must be in {interval}", value)


def _check_int(value: Any, key: str, *, minimum: int = 1, allow_none: bool = False) -> None:
    """``value`` is an int (not a bool) of at least ``minimum`` (1: "> 0", 0: ">= 0"), or None where allowed.

    The one rule of the counts that :class:`~ferfast.config.RunConfig` and the engine's ``FitConfig`` share.
    """
    if allow_none and value is None:
        return
    bound = "> 0" if minimum == 1 else f">= {minimum}"
    what = f"must be an integer {bound}{' or none' if allow_none else ''}"
    _check(not isinstance(value, bool) and isinstance(value, int) and value >= minimum, key, what, value)


def _check_choice(value: Any, key: str, choices: tuple[Any, ...]) -> None:
    """``value`` is one of ``choices``."""
    _check(value in choices, key, f"must be one of {', '.join(map(str, choices))}", value)
