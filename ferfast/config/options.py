"""The command-line options of a config class, and the one parser of override words (``--key value``,
``key=value``) that the command line and :func:`~ferfast.config.build_config` share."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from ferfast.config.keys import _leaves, _unknown
from ferfast.config.values import ConfigError, _coerce, _describe, _init_fields, _is_section, _union_args


def _metavar(tp: Any) -> str:
    args = _union_args(tp)
    if args is not None:
        return "|".join(_metavar(a) for a in args if a is not type(None)) + ("|none" if type(None) in args else "")
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(tp)) + "}"
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return f"{_metavar(items[0])},..."
        return ",".join(_metavar(i) for i in items)
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "STR", Path: "PATH"}.get(tp, "VALUE")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value) or "(empty)"
    return str(value)


def _argparse_type(tp: Any, key: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return _coerce(text, tp, key)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(e.problem) from None

    convert.__name__ = _describe(tp)  # argparse's fallback message names the type
    return convert


def _add_setting_options(
    parser: argparse.ArgumentParser,
    cls: type,
    sections: Sequence[str] | None,
    keys: Sequence[str] | None,
    *,
    typed: bool,
) -> None:
    """One ``--key`` option per setting of ``cls`` (grouped by section): the grammar of override words.

    ``typed``: each option converts its value (the command line's errors name the option); otherwise the text
    is kept, for :func:`~ferfast.config.build_config` to convert and check.
    """

    def option(group: Any, tp: Any, key: str, default: Any, help_text: str) -> None:
        kw: dict[str, Any] = dict(dest=key, default=argparse.SUPPRESS, metavar=_metavar(tp))
        if typed:
            kw["type"] = _argparse_type(tp, key)
        if tp is bool:
            kw.update(nargs="?", const=True)
            help_text += " (alone: true)"
        help_text = f"{help_text} (default: {_show(default)})".replace("%", "%%")
        group.add_argument(f"--{key}", help=help_text, **kw)

    def add(section_cls: type, base: Any, prefix: str, group: Any) -> None:
        for f, tp in _init_fields(section_cls):
            key = prefix + f.name
            default = getattr(base, f.name)
            if _is_section(tp):
                sub = parser.add_argument_group(f"{key} options", f.metadata.get("help"))
                add(tp, default, key + ".", sub)
                continue
            if keys is not None and key not in keys:
                continue
            option(group, tp, key, default, f.metadata.get("help", ""))

    base = cls()
    for f, tp in _init_fields(cls):
        if _is_section(tp) and (sections is None or f.name in sections):
            group = parser.add_argument_group(f"{f.name} options", f.metadata.get("help"))
            add(tp, getattr(base, f.name), f.name + ".", group)
        elif not _is_section(tp) and (keys is None or f.name in keys):
            option(parser, tp, f.name, getattr(base, f.name), f.metadata.get("help", ""))


class _OverrideParser(argparse.ArgumentParser):
    """argparse raising :class:`argparse.ArgumentError` instead of exiting."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        raise argparse.ArgumentError(None, message)


@cache
def _override_parser(cls: type) -> _OverrideParser:
    parser = _OverrideParser(prog=cls.__name__, add_help=False, allow_abbrev=False, exit_on_error=False)
    _add_setting_options(parser, cls, None, None, typed=False)
    return parser


def parse_overrides(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """Override words as ``{dotted key: value}``: ``["--optim.lr", "1e-4", "--data.root=/x", "run.compile=true",
    "--run.compile"]`` (a boolean alone is true; ``section__field`` is ``section.field``).

    Parsed by argparse with the options of :func:`add_config_arguments`, so the command line and
    :func:`~ferfast.config.build_config` accept the same words; values stay text (``build_config`` converts them).
    """
    leaves = _leaves(cls)
    words: list[str] = []
    takes_value = False  # the previous word is an option that takes the next word as its value
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"overrides must be strings, got {item!r}")
        if item.startswith("--"):
            key, sep, value = item[2:].partition("=")
            key = key.strip().replace("__", ".")
            if key not in leaves:
                raise _unknown(cls, key)
            words.append(f"--{key}{sep}{value}")
            takes_value = not sep
        elif takes_value:  # joined, so that a value starting with "-" is not taken for an option
            words[-1] += f"={item}"
            takes_value = False
        elif "=" in item:
            key, _, value = item.partition("=")
            key = key.strip().replace("__", ".")
            if key not in leaves:
                raise _unknown(cls, key)
            words.append(f"--{key}={value}")
        else:
            raise ConfigError(item, "an override is --key value, --key=value or key=value")
    try:
        namespace, extras = _override_parser(cls).parse_known_args(words)
    except argparse.ArgumentError as e:
        key = e.argument_name[2:] if e.argument_name and e.argument_name.startswith("--") else ""
        if key and "expected one argument" in e.message:
            raise ConfigError(key, f"--{key} needs a value") from None
        raise ConfigError(key, e.message) from None
    if extras:
        raise ConfigError(extras[0], "an override is --key value, --key=value or key=value")
    return {key: value for key, value in vars(namespace).items() if key in leaves}
