"""Keys, merging and building of :mod:`ferfast.config`: a config from defaults, files, keyword arguments and
overrides (:func:`build_config`), one derived from another (:func:`derive_config`), files and plain dicts.

Generic over the config class (any tree of dataclasses whose leaves :mod:`ferfast.config.values` converts); the
sections themselves are :mod:`ferfast.config.schema`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ferfast._io import write_text_atomic
from ferfast.config.keys import _check_class, _leaves, _sections, _unknown, config_keys
from ferfast.config.options import parse_overrides
from ferfast.config.values import ConfigError, _coerce, _init_fields, _is_section

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml
    except ModuleNotFoundError:
        _toml = None

C = TypeVar("C")


def _flatten(cls: type, values: Any, source: str) -> dict[str, Any]:
    """A nested mapping (or section instance) as ``{dotted leaf key: raw value}``, unknown keys rejected."""
    out: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.init}
        if not isinstance(node, Mapping):
            raise ConfigError(prefix.rstrip("."), f"expected a mapping of settings{source}, got {node!r}")
        for raw_key, value in node.items():
            if not isinstance(raw_key, str):
                raise ConfigError(f"{prefix}{raw_key!r}", f"keys must be strings{source}")
            key = prefix + raw_key.replace("__", ".").strip()
            if key in _leaves(cls):
                out[key] = value
            elif key in _sections(cls):
                visit(key + ".", value)
            else:
                raise _unknown(cls, key, source)

    visit("", values)
    return out


def _build(cls: type[C], flat: Mapping[str, Any], prefix: str, base: Any) -> C:
    """Instantiate ``cls`` from ``base`` (an instance, or None: the defaults) with the ``flat`` values on top."""
    kwargs: dict[str, Any] = {}
    for f, tp in _init_fields(cls):
        key = prefix + f.name
        if _is_section(tp):
            if base is not None:
                child_base = getattr(base, f.name)
            elif f.default_factory is not dataclasses.MISSING:
                child_base = f.default_factory()
            else:
                child_base = None if f.default is dataclasses.MISSING else f.default
            kwargs[f.name] = _build(tp, flat, key + ".", child_base)
        elif key in flat:
            kwargs[f.name] = _coerce(flat[key], tp, key)
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(prefix + e.key, e.problem) from None
    except (TypeError, ValueError) as e:  # a section that is not a _Section
        raise ConfigError(prefix.rstrip(".") or cls.__name__, str(e)) from None


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a ``.yaml``/``.yml`` or ``.toml`` file, as a (nested) dict; ``{}`` for an empty file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    elif suffix == ".toml":
        if _toml is None:  # pragma: no cover - Python 3.10 without tomli
            raise ModuleNotFoundError(f"reading {path} needs Python 3.11+ or `pip install tomli`")
        try:
            data = _toml.loads(text)
        except _toml.TOMLDecodeError as e:
            raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml or .toml, got {suffix or 'no suffix'!r}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def build_config(
    cls: type[C],
    file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    **kwargs: Any,
) -> C:
    """A ``cls`` instance from its defaults < ``file`` (one or several, in order) < ``kwargs`` < ``overrides``.

    ``kwargs`` take sections as mappings or instances (``stage1={"epochs": 10}``) and leaves as
    ``section__field=value``; ``overrides`` is a mapping of dotted keys or a list of command-line words
    (``["--stage1.optim.lr", "1e-4", "--data.root=/x"]``). Raises :class:`ConfigError` naming the key.
    To change some settings of an existing config, use :func:`derive_config`.
    """
    _check_class(cls)
    flat = _file_values(cls, file)
    flat.update(_changes(cls, overrides, kwargs))
    return _with_given(_build(cls, flat, "", base=None), flat)


def _file_values(cls: type, file: str | os.PathLike | Sequence[str | os.PathLike] | None) -> dict[str, Any]:
    """The settings of config files (one or several, later ones win), flat."""
    files = [] if file is None else [file] if isinstance(file, (str, os.PathLike)) else list(file)
    flat: dict[str, Any] = {}
    for path in files:
        flat.update(_flatten(cls, load_config(path), f" in {path}"))
    return flat


def _changes(cls: type, overrides: Mapping[str, Any] | Sequence[str] | None, kwargs: Mapping[str, Any]) -> dict:
    """``kwargs`` (sections, ``section__field``) then ``overrides`` (dotted keys or command-line words), flat."""
    flat = _flatten(cls, kwargs, "")
    if overrides:
        if isinstance(overrides, Mapping):
            flat.update(_flatten(cls, overrides, ""))
        elif isinstance(overrides, Sequence) and not isinstance(overrides, str):
            flat.update(parse_overrides(cls, overrides))
        else:
            raise TypeError(f"overrides must be a mapping or a list of strings, got {type(overrides).__name__}")
    return flat


def derive_config(cfg: C, overrides: Mapping[str, Any] | Sequence[str] = (), **section__field: Any) -> C:
    """``cfg`` with some settings changed: ``section__field`` keyword arguments (``stage1__epochs=10``, or a whole
    section, ``run=other.run``), then ``overrides`` (dotted keys, ``{"stage1.optim.lr": 1e-4}``, or command-line
    words, ``["--stage1.optim.lr", "1e-4"]``). The one way to derive a config from another.

    The result is validated as a whole (a :class:`ConfigError` names the key); its given keys
    (:func:`given_keys`) are ``cfg``'s plus the changed ones.
    """
    _check_class(type(cfg))
    changes = _changes(type(cfg), overrides, section__field)
    return _derive(cfg, changes, given=changes)


def _derive(cfg: C, changes: Mapping[str, Any], *, given: Any) -> C:
    """``cfg`` with the flat dotted ``changes``; given keys: ``cfg``'s plus ``given``."""
    cls = type(cfg)
    flat = _flatten(cls, cfg, "")
    flat.update(changes)
    return _with_given(_build(cls, flat, "", base=None), given_keys(cfg) | frozenset(given))


#: the attribute where :func:`build_config` records the keys it was given (see :func:`given_keys`)
_GIVEN_ATTR = "_ferfast_given_keys"


def _with_given(cfg: C, keys: Any) -> C:
    object.__setattr__(cfg, _GIVEN_ATTR, frozenset(keys))
    return cfg


def given_keys(cfg: Any) -> frozenset[str]:
    """The dotted keys set explicitly on ``cfg`` (by a file, keyword or option of :func:`build_config`, or an
    option on the command line); for a config built otherwise, the keys whose values differ from the defaults.

    A stage that takes its settings from another stage's checkpoint (:mod:`ferfast.engine.handover`) keeps the
    keys given here and inherits the others.
    """
    recorded = getattr(cfg, _GIVEN_ATTR, None)
    if recorded is not None:
        return recorded
    default = type(cfg)()
    return frozenset(k for k in config_keys(type(cfg)) if get_key(cfg, k) != get_key(default, k))


def get_key(cfg: Any, key: str) -> Any:
    """The value of a dotted key (``"stage1.optim.lr"``) of a config."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def replace_keys(cfg: C, values: Mapping[str, Any], *, given: Any = ()) -> C:
    """``cfg`` with the dotted keys of ``values`` replaced (validated), as :func:`derive_config` does, except that
    the replaced keys are not recorded as given: its given keys (:func:`given_keys`) are ``cfg``'s plus ``given``
    (an inherited setting, :mod:`ferfast.engine.handover`'s, is not one the user gave)."""
    _check_class(type(cfg))
    return _derive(cfg, _flatten(type(cfg), dict(values), ""), given=given)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """``cfg`` as nested plain types (dict, list, str, int, float, bool, None): a checkpoint's ``'args'``."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"cfg must be a config dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """The inverse of :func:`config_to_dict`: a ``cls`` from nested (or dotted) plain values, missing keys default."""
    _check_class(cls)
    return _build(cls, _flatten(cls, values, ""), "", base=None)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` to a ``.yaml``/``.yml`` or ``.json`` file that :func:`build_config` reads back (YAML)."""
    path = Path(path)
    data = config_to_dict(cfg)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    elif suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        raise ValueError(f"path must end in .yaml, .yml or .json, got {path}")
    return write_text_atomic(path, text)
