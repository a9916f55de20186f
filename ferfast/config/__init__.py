"""Training recipes as plain dataclasses: SSFER's defaults, YAML/TOML files and ``--section.field value`` overrides.

A recipe is a tree of frozen dataclasses (:class:`TrainConfig` groups ``data``, ``model``, ``run`` and the
stage sections ``pretrain``, ``stage1``, ``stage2``; each stage has its own ``optim``). Every field carries a
one-line help text (``field(metadata={"help": ...})``) that ``--help`` shows. Values come, lowest first, from

1. the dataclass defaults (the paper's recipe, docs/design.md, Recipes),
2. config files (``.yaml``/``.yml`` or ``.toml``; nested tables or dotted keys),
3. keyword arguments of the Python API (``stage1={"epochs": 10}``, ``stage1__epochs=10``, a section instance),
4. command-line overrides (``--stage1.optim.lr 1e-4``, ``--data.root=/x``, ``stage2.threshold=0.9``).

Every value is converted to its field's type (int, float, bool, str, Path, Literal choices, tuples as
``"0.9,0.95"``, ``X | None`` as ``none``/``null``) and checked; a bad or unknown key raises :class:`ConfigError`
naming the dotted key (and, for unknown keys, the closest valid ones). :func:`derive_config` changes some settings
of an existing config (the same keyword arguments and overrides). :func:`config_to_dict` gives plain types for a
checkpoint's ``'args'``; :func:`config_from_dict` reads them back.

One job per module:

- :mod:`ferfast.config.values`: type conversion and the value checks (:class:`ConfigError`);
- :mod:`ferfast.config.schema`: the sections, their defaults, help texts and validation;
- :mod:`ferfast.config.build`: keys, merging, :func:`build_config`, :func:`derive_config`, files and dicts;
- :mod:`ferfast.config.cli`: the ``--section.field`` options and the one parser of override words.

Importing it loads neither torch nor :mod:`ferfast.data` (the command line's ``--help`` stays fast).
"""

from __future__ import annotations

from ferfast.config.build import (
    build_config,
    config_from_dict,
    config_keys,
    config_to_dict,
    derive_config,
    get_key,
    given_keys,
    load_config,
    replace_keys,
    save_config,
)
from ferfast.config.cli import add_config_arguments, config_from_args
from ferfast.config.schema import (
    DEFAULT_MODEL,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
    Stage1Config,
    Stage2Config,
    TrainConfig,
)
from ferfast.config.values import ConfigError

__all__ = [
    "DEFAULT_MODEL",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "Stage1Config",
    "Stage2Config",
    "TrainConfig",
    "add_config_arguments",
    "build_config",
    "config_from_args",
    "config_from_dict",
    "config_keys",
    "config_to_dict",
    "derive_config",
    "get_key",
    "given_keys",
    "load_config",
    "replace_keys",
    "save_config",
]
