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
naming the dotted key (and, for unknown keys, the closest valid ones). :func:`config_to_dict` gives plain
types for a checkpoint's ``'args'``; :func:`config_from_dict` reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

from ferfast._io import write_text_atomic

if TYPE_CHECKING:  # the data layer imports torch: loaded only when a loader's settings are asked for
    from ferfast.data.augment import AugmentConfig, RandAugmentConfig

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml
    except ModuleNotFoundError:
        _toml = None

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
    "get_key",
    "given_keys",
    "load_config",
    "replace_keys",
    "save_config",
]

C = TypeVar("C")

#: ``data.format`` values: ``auto`` guesses from the root's files; the others are ``ferfast.data.formats`` names.
DatasetFormat = Literal[
    "auto", "rafdb", "synthetic", "ferplus", "affectnet", "affectnet7", "affectnet8", "imagefolder",
    "folder", "filelist", "mxrec",
]  # fmt: skip
#: ``data.unlabeled_format`` values (unlabeled face collections).
UnlabeledFormat = Literal["auto", "folder", "filelist", "mxrec"]
LoaderBackend = Literal["auto", "dali", "torch"]
DaliDevice = Literal["auto", "cpu", "gpu"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
NonFinitePolicy = Literal["stop", "rollback"]
LrSchedule = Literal["cosine", "step", "constant"]
MixupPairing = Literal["flip", "random"]

_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0"})
_NONE = frozenset({"none", "null", "~", ""})


class ConfigError(ValueError):
    """A bad config key or value; ``key`` is the dotted key (``"stage1.optim.lr"``), ``problem`` the reason."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def _doc(text: str) -> dict[str, str]:
    """A field's metadata: its one-line help, shown by ``--help``."""
    return {"help": text}


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


# -- the sections ---------------------------------------------------------------------------------


class _Section:
    """Base of every config section: converts each field to its declared type, then runs ``validate``."""

    def __post_init__(self) -> None:
        for f, tp in _init_fields(type(self)):
            value = getattr(self, f.name)
            if _is_section(tp):
                if isinstance(value, Mapping):
                    value = _build(tp, _flatten(tp, value, ""), "", base=None)
                elif not isinstance(value, tp):
                    raise ConfigError(f.name, f"expected a {tp.__name__} or a mapping, got {type(value).__name__}")
            else:
                value = _coerce(value, tp, f.name)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Check the values (ranges, consistency); raise :class:`ConfigError` naming the field."""


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


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which faces to train on and how to load and augment them (stage-independent)."""

    format: DatasetFormat = field(
        default="auto", metadata=_doc("dataset format of data.root (auto: guessed from its files)")
    )
    root: Path | None = field(
        default=None, metadata=_doc("root folder of the labeled dataset (RAF-DB, FERPlus, AffectNet, ImageFolder)")
    )
    train_split: str = field(
        default="train", metadata=_doc("split used for training (the labeled part and the unlabeled pool)")
    )
    val_split: str | None = field(
        default=None, metadata=_doc("split evaluated every run.eval_every epochs of stages 1 and 2 (none: test split)")
    )
    test_split: str = field(
        default="test", metadata=_doc("split of the final evaluation (AffectNet: its validation set)")
    )
    labeled_fraction: float = field(
        default=0.25,
        metadata=_doc("fraction of the training set that keeps its labels, per class max(1, round(p*n)) (1 = all)"),
    )
    split_file: Path | None = field(
        default=None, metadata=_doc("JSON label split to reuse or write (none: <run.output_dir>/split.json)")
    )
    seed: int = field(default=0, metadata=_doc("seed of the labeled/unlabeled split"))
    unlabeled_root: Path | None = field(
        default=None,
        metadata=_doc("unlabeled faces for MAE pretraining and extra stage-2 pool (folder, file list or .rec)"),
    )
    unlabeled_format: UnlabeledFormat = field(
        default="auto", metadata=_doc("format of data.unlabeled_root (auto: guessed)")
    )
    image_size: int = field(default=224, metadata=_doc("side of the square network input, in pixels"))
    scale: tuple[float, float] = field(default=(0.2, 1.0), metadata=_doc("RandomResizedCrop area range (min,max)"))
    ratio: tuple[float, float] = field(
        default=(3.0 / 4.0, 4.0 / 3.0), metadata=_doc("RandomResizedCrop aspect-ratio range (min,max)")
    )
    flip_prob: float = field(default=0.5, metadata=_doc("probability of a horizontal flip"))
    loader: LoaderBackend = field(
        default="auto", metadata=_doc("data loader: dali, torch, or auto (DALI when installed)")
    )
    num_workers: int = field(default=4, metadata=_doc("worker processes of the torch loader"))
    dali_device: DaliDevice = field(
        default="auto",
        metadata=_doc("where the DALI loader decodes and augments: gpu (nvjpeg 'mixed' decoding), cpu, or auto "
                      "(gpu when torch sees one); the torch loader always works on the CPU"),
    )  # fmt: skip

    def validate(self) -> None:
        _in_unit(self, "labeled_fraction", low_open=True, high_open=False)
        _positive(self, "image_size")
        _nonnegative(self, "seed", "num_workers")
        _check(0.0 < self.scale[0] <= self.scale[1] <= 1.0, "scale", "must satisfy 0 < min <= max <= 1", self.scale)
        _check(0.0 < self.ratio[0] <= self.ratio[1], "ratio", "must satisfy 0 < min <= max", self.ratio)
        _in_unit(self, "flip_prob", low_open=False, high_open=False)
        for name in ("train_split", "test_split"):
            _check(bool(getattr(self, name).strip()), name, "must not be empty", getattr(self, name))

    def augment(self, rand_augment: RandAugmentConfig | None = None) -> AugmentConfig:
        """The loaders' :class:`~ferfast.data.augment.AugmentConfig` (face mean/std) for these settings."""
        from ferfast.data.augment import AugmentConfig, RandAugmentConfig

        return AugmentConfig(
            image_size=self.image_size, scale=self.scale, ratio=self.ratio, flip_prob=self.flip_prob,
            rand_augment=rand_augment or RandAugmentConfig(),
        )  # fmt: skip


#: ``model.name``'s default: SSFER's ViT-B/16 (a family name, as :func:`ferfast.models.resolve_model_names` gives)
DEFAULT_MODEL = "vit_base_patch16"


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The ViT encoder (timm/MAE names) and the checkpoint it starts from."""

    name: str = field(
        default=DEFAULT_MODEL,
        metadata=_doc(
            "ViT architecture (timm/MAE names): vit_demo, vit_small_patch16, vit_base_patch16, ...; mae_vit_demo "
            "etc. name the same one (pretraining builds its MAE, fine-tuning its classifier); see `python -m "
            "ferfast.train list-models`"
        ),
    )
    num_classes: int | None = field(
        default=None,
        metadata=_doc("expression classes (none: the dataset's, e.g. 7 for RAF-DB; if set, it must match)"),
    )
    drop_path: float = field(default=0.1, metadata=_doc("stochastic depth rate of fine-tuning"))
    global_pool: bool = field(
        default=False,
        metadata=_doc(
            "false: the [CLS] token after the encoder's norm (SSFER's fine-tuning); true: the mean of the patch "
            "tokens with a fresh fc_norm (MAE's fine-tuning default)"
        ),
    )
    pretrained: Path | None = field(
        default=None, metadata=_doc("checkpoint to start from (MAE, SSFER or ferfast; head dropped)")
    )

    def validate(self) -> None:
        """Check the values; ``name`` is stored as its family, the classifier's name (``mae_vit_demo`` -> ``vit_demo``).

        Either form of a registered name is accepted (:func:`ferfast.models.resolve_model_names`); an unknown
        one is an error listing the valid names and the closest.
        """
        _check(bool(self.name.strip()), "name", "must not be empty", self.name)
        if self.name != DEFAULT_MODEL:  # the default is a family name (a test checks it): no registry import
            from ferfast.models.factory import resolve_model_names  # lazily: the registry imports torch

            try:
                _, family = resolve_model_names(self.name)
            except ValueError as e:
                raise ConfigError("name", str(e)) from None
            object.__setattr__(self, "name", family)
        _positive(self, "num_classes")
        _check(0.0 <= self.drop_path < 1.0, "drop_path", "must be in [0, 1)", self.drop_path)


@dataclass(frozen=True)
class OptimConfig(_Section):
    """AdamW and its learning-rate schedule (MAE's ``lr = blr * effective batch / 256`` when lr is none)."""

    lr: float | None = field(default=None, metadata=_doc("absolute learning rate (none: blr * effective batch / 256)"))
    blr: float | None = field(default=None, metadata=_doc("base learning rate per 256 images, used when lr is none"))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_doc("AdamW betas (beta1,beta2)"))
    weight_decay: float = field(default=0.05, metadata=_doc("AdamW weight decay (not on biases, norms, tokens)"))
    eps: float = field(default=1e-8, metadata=_doc("AdamW epsilon"))
    schedule: LrSchedule = field(
        default="cosine", metadata=_doc("learning-rate schedule after warmup: cosine, step or constant")
    )
    warmup_epochs: float = field(
        default=0.0, metadata=_doc("epochs of linear warmup from 0 (fractional: the lr is set every step, as MAE's)")
    )
    min_lr: float = field(default=0.0, metadata=_doc("lowest learning rate of the cosine schedule"))
    milestones: tuple[int, ...] = field(
        default=(), metadata=_doc("epochs where the step schedule multiplies the lr by gamma (e.g. 20,40)")
    )
    gamma: float = field(default=0.1, metadata=_doc("factor of the step schedule at each milestone"))
    clip_grad: float | None = field(default=None, metadata=_doc("clip the gradient norm to this (none: no clipping)"))
    accum_steps: int = field(default=1, metadata=_doc("gradient accumulation: optimizer step every N batches"))
    layer_decay: float | None = field(
        default=None, metadata=_doc("layer-wise lr decay of fine-tuning (e.g. 0.75; none: off)")
    )

    def validate(self) -> None:
        _check(self.lr is not None or self.blr is not None, "lr", "set lr or blr (both are none)", self.lr)
        _positive(self, "lr", "blr", "eps", "clip_grad", "accum_steps")
        for i, beta in enumerate(self.betas):
            _check(0.0 <= beta < 1.0, f"betas[{i}]", "must be in [0, 1)", beta)
        _nonnegative(self, "weight_decay", "warmup_epochs", "min_lr")
        _check(
            all(m > 0 for m in self.milestones) and list(self.milestones) == sorted(set(self.milestones)),
            "milestones", "must be positive and strictly increasing", self.milestones,
        )  # fmt: skip
        _check(0.0 < self.gamma <= 1.0, "gamma", "must be in (0, 1]", self.gamma)
        if self.layer_decay is not None:
            _in_unit(self, "layer_decay", low_open=True, high_open=False)

    def effective_lr(self, effective_batch_size: int) -> float:
        """The absolute learning rate: ``lr``, else ``blr * effective_batch_size / 256`` (MAE's rule)."""
        if self.lr is not None:
            return self.lr
        assert self.blr is not None  # validate() guarantees one of them
        return self.blr * effective_batch_size / 256


def _check_stage(stage: Any, *batch_fields: str) -> None:
    # warmup_epochs > epochs is allowed (short demo runs keep the recipe's warmup; the lr never leaves it)
    _positive(stage, "epochs", *batch_fields)


@dataclass(frozen=True)
class PretrainConfig(_Section):
    """MAE pretraining on unlabeled faces (MAE ViT-B/16, docs/design.md, Recipes)."""

    epochs: int = field(default=400, metadata=_doc("pretraining epochs (MAE's main_pretrain default)"))
    batch_size: int = field(
        default=256, metadata=_doc("images per step and device (effective batch = x devices x accum_steps)")
    )
    mask_ratio: float = field(default=0.75, metadata=_doc("fraction of the patches removed from the encoder's input"))
    norm_pix_loss: bool = field(
        default=True, metadata=_doc("reconstruct per-patch normalised pixels (MAE's norm_pix_loss)")
    )
    decoder_embed_dim: int | None = field(
        default=None, metadata=_doc("width of the MAE decoder (none: the model's own, 512 for ViT-B, 64 for vit_demo)")
    )
    decoder_depth: int | None = field(
        default=None, metadata=_doc("blocks of the MAE decoder (none: the model's own, 8 for ViT-B, 2 for vit_demo)")
    )
    decoder_num_heads: int | None = field(
        default=None, metadata=_doc("heads of the MAE decoder (none: the model's own, 16 for ViT-B, 4 for vit_demo)")
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(blr=3.4e-4, warmup_epochs=50, schedule="cosine"),
        metadata=_doc("optimizer: AdamW(0.9, 0.95), wd 0.05, lr 3.4e-4 per 256 images, 50 warmup epochs, cosine"),
    )

    def validate(self) -> None:
        _check_stage(self, "batch_size", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
        _in_unit(self, "mask_ratio", low_open=True, high_open=True)
        layer_decay = self.optim.layer_decay
        _check(layer_decay is None, "optim.layer_decay", "is for fine-tuning (MAE pretrains without it)", layer_decay)


@dataclass(frozen=True)
class Stage1Config(_Section):
    """Stage 1: supervised fine-tuning on the labeled faces with face-IoU Mixup (SSFER)."""

    epochs: int = field(default=100, metadata=_doc("fine-tuning epochs"))
    batch_size: int = field(default=32, metadata=_doc("labeled images per step and device"))
    ema_decay: float = field(
        default=0.999, metadata=_doc("decay of the EMA of the weights (the model evaluated and handed to stage 2)")
    )
    label_smoothing: float = field(default=0.1, metadata=_doc("label smoothing of the mixed targets"))
    mixup: bool = field(default=True, metadata=_doc("face-IoU Mixup on (false: plain cross-entropy)"))
    mixup_alpha: float = field(default=1.0, metadata=_doc("Mixup's lambda ~ Beta(alpha, alpha)"))
    mixup_pairing: MixupPairing = field(
        default="flip", metadata=_doc("Mixup partner of image i: flip (B-1-i, SSFER) or random")
    )
    fallback_box: tuple[float, float, float, float] = field(
        default=(25.0, 25.0, 220.0, 220.0), metadata=_doc("face box x1,y1,x2,y2 (pixels of 224x224) when none is known")
    )
    ssfer_compat: bool = field(
        default=False, metadata=_doc("mix in place like SSFER's released code (its 'real' loss sees mixed images)")
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1.5e-4, warmup_epochs=5, schedule="cosine", min_lr=1e-6),
        metadata=_doc("optimizer: AdamW(0.9, 0.95) lr 1.5e-4, wd 0.05, cosine with 5 warmup epochs"),
    )

    def validate(self) -> None:
        _check_stage(self, "batch_size")
        _in_unit(self, "ema_decay", low_open=False, high_open=True)
        _in_unit(self, "label_smoothing", low_open=False, high_open=True)
        _positive(self, "mixup_alpha")
        x1, y1, x2, y2 = self.fallback_box
        _check(0 <= x1 < x2 and 0 <= y1 < y2, "fallback_box", "must be x1,y1,x2,y2 with x1 < x2, y1 < y2",
               self.fallback_box)  # fmt: skip


@dataclass(frozen=True)
class Stage2Config(_Section):
    """Stage 2: FixMatch with an EMA teacher on the labeled set plus the unlabeled pool (SSFER)."""

    epochs: int = field(
        default=50, metadata=_doc("semi-supervised epochs (one epoch = one pass over the unlabeled pool)")
    )
    batch_size: int = field(default=64, metadata=_doc("labeled images per step and device"))
    unlabeled_batch_size: int = field(
        default=64, metadata=_doc("unlabeled images per step and device (weak + strong view each)")
    )
    ema_decay: float = field(default=0.999, metadata=_doc("decay of the EMA teacher that makes the pseudo-labels"))
    threshold: float = field(
        default=0.7, metadata=_doc("confidence a pseudo-label needs (max softmax of the weak view)")
    )
    unlabeled_weight: float = field(default=5.0, metadata=_doc("weight of the unlabeled (pseudo-label) loss"))
    label_smoothing: float = field(
        default=0.1, metadata=_doc("label smoothing of the labeled images' cross-entropy (SSFER's 0.1, as in stage 1)")
    )
    rand_augment_ops: int = field(
        default=2, metadata=_doc("RandAugment ops per strong view (timm's rand-m9-mstd0.5-inc1)")
    )
    rand_augment_magnitude: float = field(default=9.0, metadata=_doc("RandAugment magnitude, 0-10"))
    rand_augment_magnitude_std: float = field(default=0.5, metadata=_doc("per-image std of the RandAugment magnitude"))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1.5e-4, schedule="step", milestones=(20, 40), gamma=0.1),
        metadata=_doc("optimizer: AdamW(0.9, 0.95) lr 1.5e-4, wd 0.05, x0.1 at epochs 20 and 40"),
    )

    def validate(self) -> None:
        _check_stage(self, "batch_size", "unlabeled_batch_size")
        _in_unit(self, "ema_decay", low_open=False, high_open=True)
        _in_unit(self, "threshold", low_open=False, high_open=False)
        _in_unit(self, "label_smoothing", low_open=False, high_open=True)
        _nonnegative(self, "unlabeled_weight", "rand_augment_ops", "rand_augment_magnitude_std")
        magnitude = self.rand_augment_magnitude
        _check(0.0 <= magnitude <= 10.0, "rand_augment_magnitude", "must be in [0, 10] (timm's scale)", magnitude)

    def rand_augment(self) -> RandAugmentConfig:
        """The strong view's :class:`~ferfast.data.augment.RandAugmentConfig`."""
        from ferfast.data.augment import RandAugmentConfig

        return RandAugmentConfig(
            num_ops=self.rand_augment_ops,
            magnitude=self.rand_augment_magnitude,
            magnitude_std=self.rand_augment_magnitude_std,
        )


@dataclass(frozen=True)
class RunConfig(_Section):
    """Where a run writes, on which device and precision, and how it logs, checkpoints and recovers."""

    output_dir: Path = field(
        default=Path("runs/ferfast"), metadata=_doc("folder of checkpoints, logs, the split file and config.yaml")
    )
    seed: int = field(default=0, metadata=_doc("seed of the model's initialisation and the augmentations"))
    device: Device = field(default="auto", metadata=_doc("auto (cuda when available), cpu or cuda"))
    precision: Precision = field(
        default="auto",
        metadata=_doc("autocast dtype: bf16, fp16 (with a GradScaler), fp32, or auto: bf16 on a GPU that supports "
                      "it; on the CPU bf16 only with native bf16 units (AMX/AVX512-BF16) when a short measurement "
                      "of the model finds it faster, else fp32 (the choice is printed at start-up)"),
    )  # fmt: skip
    compile: bool = field(default=False, metadata=_doc("torch.compile the model (the training step is unchanged)"))
    compile_mode: CompileMode = field(
        default="default",
        metadata=_doc("torch.compile mode with run.compile: default, reduce-overhead (CUDA graphs of the forward "
                      "and backward passes on a GPU; needs a step without host synchronisation, as ferfast's are) "
                      "or max-autotune"),
    )  # fmt: skip
    resume: Path | None = field(
        default=None,
        metadata=_doc("checkpoint of the first stage run to resume from, when its output folder has none of its own "
                      "(a run always continues from its own checkpoint-last.pth)"),
    )  # fmt: skip
    nonfinite: NonFinitePolicy = field(
        default="stop",
        metadata=_doc("on a NaN/inf loss: stop, or rollback to the last checkpoint; checked on the device and read "
                      "every run.log_every steps and at each epoch's end (before its checkpoint), so a bad loss "
                      "is caught up to log_every - 1 steps later, and those steps' weights are never saved"),
    )  # fmt: skip
    log_every: int = field(
        default=20,
        metadata=_doc("log the metrics (means since the last record) every N steps; the only steps that read "
                      "tensors on the host"),
    )  # fmt: skip
    print_every: int = field(
        default=1, metadata=_doc("print a one-line summary every N epochs and after the last (0: never)")
    )
    eval_every: int = field(
        default=1, metadata=_doc("stages 1 and 2: evaluate on data.val_split every N epochs and after the last")
    )
    save_every: int = field(
        default=10,
        metadata=_doc("a numbered checkpoint-<N>.pth (the state after N epochs) every N epochs and after the last "
                      "(checkpoint-last.pth: every epoch)"),
    )  # fmt: skip
    save_every_steps: int = field(
        default=0,
        metadata=_doc("also write checkpoint-last.pth every N steps inside an epoch (at an optimizer step), so that "
                      "a killed run of long epochs resumes in the middle of one, exactly; 0: only at the epochs' "
                      "ends"),
    )  # fmt: skip
    keep_checkpoints: int = field(
        default=2, metadata=_doc("keep the N newest numbered checkpoints (plus checkpoint-last and checkpoint-best)")
    )
    tensorboard: bool = field(default=True, metadata=_doc("write TensorBoard events next to the JSON-lines log"))

    def validate(self) -> None:
        _nonnegative(self, "seed", "print_every", "save_every_steps")
        _positive(self, "log_every", "eval_every", "save_every", "keep_checkpoints")


@dataclass(frozen=True)
class TrainConfig(_Section):
    """A whole SSFER run: data, model, run settings and the three stages' recipes."""

    data: DataConfig = field(
        default_factory=DataConfig, metadata=_doc("dataset, label fraction, augmentation and loader")
    )
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata=_doc("ViT encoder and the checkpoint it starts from")
    )
    run: RunConfig = field(
        default_factory=RunConfig, metadata=_doc("output, device, precision, logging and checkpoints")
    )
    pretrain: PretrainConfig = field(
        default_factory=PretrainConfig, metadata=_doc("MAE pretraining on unlabeled faces")
    )
    stage1: Stage1Config = field(
        default_factory=Stage1Config, metadata=_doc("stage 1: fine-tuning with face-IoU Mixup")
    )
    stage2: Stage2Config = field(default_factory=Stage2Config, metadata=_doc("stage 2: FixMatch with an EMA teacher"))


# -- keys, merging and building -------------------------------------------------------------------


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


def _parse_override_list(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """``["--optim.lr", "1e-4", "--data.root=/x", "run.compile=true", "--run.compile"]`` as ``{key: text}``."""
    leaves = _leaves(cls)
    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if not isinstance(item, str):
            raise TypeError(f"overrides must be strings, got {item!r}")
        body = item[2:] if item.startswith("--") else item
        if "=" in body:
            key, value = body.split("=", 1)
        elif item.startswith("--"):
            key = body
            if i + 1 < len(items) and not items[i + 1].startswith("--"):
                value, i = items[i + 1], i + 1
            elif leaves.get(key) is bool:
                value = "true"
            else:
                raise ConfigError(key, f"--{key} needs a value")
        else:
            raise ConfigError(item, "an override is --key value, --key=value or key=value")
        key = key.strip().replace("__", ".")
        if key not in leaves:
            raise _unknown(cls, key)
        out[key] = value
        i += 1
    return out


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
    """
    _check_class(cls)
    files = [] if file is None else [file] if isinstance(file, (str, os.PathLike)) else list(file)
    flat: dict[str, Any] = {}
    for path in files:
        flat.update(_flatten(cls, load_config(path), f" in {path}"))
    flat.update(_flatten(cls, kwargs, ""))
    if overrides:
        if isinstance(overrides, Mapping):
            flat.update(_flatten(cls, overrides, ""))
        elif isinstance(overrides, Sequence) and not isinstance(overrides, str):
            flat.update(_parse_override_list(cls, overrides))
        else:
            raise TypeError(f"overrides must be a mapping or a list of strings, got {type(overrides).__name__}")
    return _with_given(_build(cls, flat, "", base=None), flat)


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
    """``cfg`` with the dotted keys of ``values`` replaced (validated). Its given keys (:func:`given_keys`) are
    ``cfg``'s plus ``given``: an inherited setting is not one the user gave."""
    cls = type(cfg)
    sections = {f.name: getattr(cfg, f.name) for f, tp in _init_fields(cls) if _is_section(tp)}
    flat = _flatten(cls, sections, "")
    flat.update(_flatten(cls, dict(values), ""))
    return _with_given(_build(cls, flat, "", base=None), given_keys(cfg) | frozenset(given))


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


# -- argparse -------------------------------------------------------------------------------------


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


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, sections: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
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
    parser.add_argument(
        "--config", action="append", type=Path, metavar="FILE",
        help="YAML or TOML file of settings (nested sections or dotted keys); repeat to merge several, later "
        "files win; --section.field options override them",
    )  # fmt: skip
    parser.set_defaults(_config_cls=cls, _config_sections=tuple(sections) if sections is not None else None)

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
            help_text = f.metadata.get("help", "")
            kw: dict[str, Any] = dict(dest=key, default=argparse.SUPPRESS, metavar=_metavar(tp))
            if tp is bool:
                kw.update(nargs="?", const=True)
                help_text += " (alone: true)"
            help_text = f"{help_text} (default: {_show(default)})".replace("%", "%%")
            group.add_argument(f"--{key}", type=_argparse_type(tp, key), help=help_text, **kw)

    if keys is not None:
        unknown = sorted(set(keys) - set(_leaves(cls)))
        if unknown:
            raise ValueError(f"keys: {unknown} are not settings of {cls.__name__}")
    base = cls()
    for f, tp in _init_fields(cls):
        if _is_section(tp) and (sections is None or f.name in sections):
            group = parser.add_argument_group(f"{f.name} options", f.metadata.get("help"))
            add(tp, getattr(base, f.name), f.name + ".", group)
        elif not _is_section(tp):
            key = f.name
            parser.add_argument(
                f"--{key}", dest=key, default=argparse.SUPPRESS, type=_argparse_type(tp, key), metavar=_metavar(tp),
                help=f"{f.metadata.get('help', '')} (default: {_show(getattr(base, key))})".replace("%", "%%"),
            )  # fmt: skip
    return parser


def config_from_args(
    cls: type[C], args: argparse.Namespace, parser: argparse.ArgumentParser | None = None, **kwargs: Any
) -> C:
    """The config of a command line parsed with :func:`add_config_arguments`: defaults < ``--config`` files <
    ``kwargs`` < the options given. With ``parser``, a bad file or value exits through ``parser.error``."""
    _check_class(cls)
    given = {key: getattr(args, key) for key in _leaves(cls) if hasattr(args, key)}
    try:
        return build_config(cls, file=getattr(args, "config", None), overrides=given, **kwargs)
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
