"""Stages that hand over: a stage started from another stage's checkpoint takes that stage's settings.

A ferfast checkpoint records the config it was trained with. Stage 1 started from a pretraining checkpoint
(``model.pretrained``) takes its model and image size; stage 2 started from stage 1's checkpoint takes the model,
its pooling, the image size and the dataset and label split stage 1 trained on. A setting the user gave
(:func:`ferfast.config.given_keys`) is kept: when it is one the checkpoint's weights or split depend on
(:data:`MUST_MATCH`) and differs, that is a :class:`~ferfast.config.ConfigError` naming both values; otherwise the
user's value wins and the hand-over says so (e.g. fine-tuning at another resolution than the pretraining's, whose
position embeddings are then interpolated). The normalisation is ferfast's fixed face mean/std in every stage,
so there is nothing to hand over there. A checkpoint without ferfast's config (MAE's or SSFER's own) hands over
nothing: the run's settings apply as given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferfast.config import ConfigError, TrainConfig, config_from_dict, get_key, given_keys, replace_keys

__all__ = ["FROM_PRETRAIN", "FROM_STAGE1", "MUST_MATCH", "Handover", "check_class_names", "hand_over", "saved_config"]

#: what stage 1 takes from a ferfast pretraining checkpoint
FROM_PRETRAIN: tuple[str, ...] = ("model.name", "data.image_size")
#: what stage 2 takes from stage 1's checkpoint
FROM_STAGE1: tuple[str, ...] = (
    "model.name",
    "model.global_pool",
    "data.image_size",
    "data.root",
    "data.format",
    "data.train_split",
    "data.labeled_fraction",
    "data.seed",
    "data.split_file",
)
#: settings that must equal the checkpoint's when given: the weights (model.name, global_pool), or stage 2's
#: labeled images (fraction, seed), would not be the ones the checkpoint was trained with
MUST_MATCH: frozenset[str] = frozenset({"model.name", "model.global_pool", "data.labeled_fraction", "data.seed"})
#: per source stage, the keys that must match (stage 2 also needs stage 1's image size: same weights, same views)
_MUST = {"pretrain": MUST_MATCH, "stage1": MUST_MATCH | {"data.image_size"}}


@dataclass
class Handover:
    """What a stage took from the checkpoint it starts from, for the start-up summary."""

    source: Path
    inherited: dict[str, Any] = field(default_factory=dict)  #: key -> the checkpoint's value, now the run's
    kept: dict[str, tuple[Any, Any]] = field(default_factory=dict)  #: key -> (the user's value, the checkpoint's)

    def lines(self) -> list[str]:
        """The summary's lines: what came from the checkpoint, and where the user's setting won."""
        out = []
        if self.inherited:
            taken = ", ".join(f"{k}={_show(v)}" for k, v in self.inherited.items())
            out.append(f"from {self.source}: {taken}")
        for key, (mine, theirs) in self.kept.items():
            out.append(f"{key}={_show(mine)} as given (the checkpoint was trained with {_show(theirs)})")
        return out


def _show(value: Any) -> str:
    return str(value) if isinstance(value, (str, os.PathLike)) else repr(value)


def saved_config(ckpt: Mapping[str, Any]) -> tuple[TrainConfig, str | None] | None:
    """The config a ferfast checkpoint records and its stage, or None for a checkpoint without one (MAE's,
    SSFER's) or with settings this version does not know."""
    args = ckpt.get("args")
    if not isinstance(args, Mapping) or not isinstance(args.get("model"), Mapping):
        return None
    try:
        return config_from_dict(TrainConfig, {k: v for k, v in args.items() if k != "stage"}), args.get("stage")
    except (ConfigError, TypeError, ValueError):
        return None


def hand_over(
    cfg: TrainConfig, saved: TrainConfig, source: str | os.PathLike, keys: Sequence[str], source_stage: str
) -> tuple[TrainConfig, Handover]:
    """``cfg`` with ``keys`` taken from ``saved`` (the config of the checkpoint ``source``, of ``source_stage``)
    where the user did not give them; a given key of :data:`MUST_MATCH` that differs raises
    :class:`~ferfast.config.ConfigError` naming both values and the checkpoint."""
    given = given_keys(cfg)
    report = Handover(Path(source))
    must = _MUST.get(source_stage, MUST_MATCH)
    for key in keys:
        mine, theirs = get_key(cfg, key), get_key(saved, key)
        if mine == theirs:
            continue
        if key not in given:
            report.inherited[key] = theirs
        elif key in must:
            raise ConfigError(
                key,
                f"is {_show(mine)}, but {source} ({source_stage}) was trained with {_show(theirs)}; leave "
                f"--{key} out to use the checkpoint's, or start from another checkpoint",
            )
        else:
            report.kept[key] = (mine, theirs)
    if report.inherited:
        cfg = replace_keys(cfg, report.inherited)
    return cfg, report


def check_class_names(ours: Sequence[str], theirs: Sequence[str], root: Any, source: str | os.PathLike) -> None:
    """Stage 2's dataset must have the classes, in order, that stage 1's checkpoint was trained on."""
    if list(ours) != list(theirs):
        raise ConfigError(
            "data.root",
            f"{root} has the classes {list(ours)}, but {source} was trained on {list(theirs)}: stage 2 must "
            "train on stage 1's dataset",
        )
