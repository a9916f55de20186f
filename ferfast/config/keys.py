"""The dotted keys of a config class: its leaves and sections, and the closest keys to an unknown one."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import cache
from typing import Any

from ferfast.config.values import ConfigError, _init_fields, _is_section


@cache
def _leaves(cls: type) -> dict[str, Any]:
    """Every leaf key of ``cls`` (dotted, in declaration order) -> its type."""
    out: dict[str, Any] = {}
    for f, tp in _init_fields(cls):
        if _is_section(tp):
            out.update({f"{f.name}.{k}": t for k, t in _leaves(tp).items()})
        else:
            out[f.name] = tp
    return out


@cache
def _sections(cls: type) -> dict[str, type]:
    """Every nested section of ``cls`` (dotted) -> its class."""
    out: dict[str, type] = {}
    for f, tp in _init_fields(cls):
        if _is_section(tp):
            out[f.name] = tp
            out.update({f"{f.name}.{k}": t for k, t in _sections(tp).items()})
    return out


def config_keys(cls: type) -> list[str]:
    """The dotted keys of every setting of the config class ``cls`` (``["data.format", ..., "stage2.optim.lr"]``)."""
    _check_class(cls)
    return list(_leaves(cls))


def _check_class(cls: Any) -> None:
    if not _is_section(cls):
        raise TypeError(f"cls must be a config dataclass such as ferfast.config.TrainConfig, got {cls!r}")


def _close_keys(key: str, keys: Sequence[str]) -> list[str]:
    """The (at most five) dotted keys of ``keys`` closest to the unknown ``key``, best first.

    difflib on the whole key and on its last part, so ``stage1.epoch`` finds ``stage1.epochs`` and
    ``stage1.lr`` finds ``stage1.optim.lr``. Shared by unknown config keys and unknown command-line options.
    """
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    last = key.rsplit(".", 1)[-1]
    close += [k for k in keys if difflib.get_close_matches(last, [k.rsplit(".", 1)[-1]], cutoff=0.8)]
    return list(dict.fromkeys(close))[:5]


def _unknown(cls: type, key: str, source: str = "") -> ConfigError:
    """An unknown-key error with the closest valid keys (see :func:`_close_keys`)."""
    close = _close_keys(key, [*_leaves(cls), *_sections(cls)])
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid sections: {', '.join(_sections(cls))}"
    return ConfigError(key, f"unknown {cls.__name__} key{source}{hint}")
