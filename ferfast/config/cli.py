"""The command line of :mod:`ferfast.config`: one ``--section.field VALUE`` option per setting
(:func:`add_config_arguments`, read back by :func:`config_from_args`). The options themselves and the one parser
of override words live in :mod:`ferfast.config.options`, which :func:`~ferfast.config.build_config` uses too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from ferfast.config.build import _changes, _check_class, _derive, _file_values, _leaves, build_config
from ferfast.config.options import _add_setting_options
from ferfast.config.values import ConfigError, _init_fields, _is_section

C = TypeVar("C")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, sections: Sequence[str] | None = None, keys: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """Add ``--config FILE`` and one ``--section.field VALUE`` option per setting of ``cls`` to ``parser``.

    Options are grouped by section, with the field's help and default; ``sections`` limits them to some
    top-level sections (e.g. ``("data", "model", "run", "stage1")``), ``keys`` to some dotted keys (a command
    that uses only those, e.g. ``evaluate``). Read them back with :func:`config_from_args`.

    Abbreviated options are turned off on ``parser`` (``allow_abbrev = False``): argparse would otherwise take
    ``--stage1.epoch`` for ``--stage1.epochs``, a key that :func:`build_config` and the Python API reject, so
    the command line and the API accept the same keys.
    """
    _check_class(cls)
    parser.allow_abbrev = False
    known = [f.name for f, tp in _init_fields(cls) if _is_section(tp)]
    if sections is not None:
        for name in sections:
            if name not in known:
                raise ValueError(f"sections: {name!r} is not a section of {cls.__name__} ({', '.join(known)})")
    if keys is not None:
        unknown = sorted(set(keys) - set(_leaves(cls)))
        if unknown:
            raise ValueError(f"keys: {unknown} are not settings of {cls.__name__}")
    parser.add_argument(
        "--config",
        action="append",
        type=Path,
        metavar="FILE",
        help="YAML or TOML file of settings (nested sections or dotted keys); repeat to merge several, later "
        "files win; --section.field options override them",
    )
    parser.set_defaults(_config_cls=cls, _config_sections=tuple(sections) if sections is not None else None)
    _add_setting_options(parser, cls, sections, keys, typed=True)
    return parser


def config_from_args(
    cls: type[C],
    args: argparse.Namespace,
    parser: argparse.ArgumentParser | None = None,
    base: C | None = None,
    **kwargs: Any,
) -> C:
    """The config of a command line parsed with :func:`add_config_arguments`: defaults (or ``base``) <
    ``--config`` files < ``kwargs`` < the options given. With ``base`` (e.g. a checkpoint's config), the result is
    :func:`~ferfast.config.derive_config`'s. With ``parser``, a bad file or value exits through ``parser.error``."""
    _check_class(cls)
    if base is not None and not isinstance(base, cls):
        raise TypeError(f"base must be a {cls.__name__}, got {type(base).__name__}")
    given = {key: getattr(args, key) for key in _leaves(cls) if hasattr(args, key)}
    try:
        if base is None:
            return build_config(cls, file=getattr(args, "config", None), overrides=given, **kwargs)
        changes = _file_values(cls, getattr(args, "config", None))
        changes.update(_changes(cls, given, kwargs))
        return _derive(base, changes, given=changes)
    except FileNotFoundError as e:
        if parser is None:
            raise
        parser.error(f"argument --config: {e}")
    except ConfigError as e:
        if parser is None:
            raise
        key = e.key.split("[")[0]
        if key in given:
            parser.error(f"argument --{key}: {e.problem}")
        parser.error(f"argument --config: {e}")
    except ValueError as e:  # an unreadable config file
        if parser is None:
            raise
        parser.error(f"argument --config: {e}")
    raise AssertionError("unreachable")  # parser.error exits
