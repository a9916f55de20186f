"""The settings of a run: :class:`TrainConfig` and its sections, with their defaults (SSFER's recipes), help
texts and validation. Building, merging and files are :mod:`ferfast.config.build`'s; the types' conversion and
the checks are :mod:`ferfast.config.values`'s.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ferfast.config.build import _build, _flatten
from ferfast.config.values import (
    ConfigError,
    _check,
    _check_choice,
    _check_int,
    _coerce,
    _in_unit,
    _init_fields,
    _is_section,
    _nonnegative,
    _positive,
)

if TYPE_CHECKING:  # the data layer imports torch: loaded only when a loader's settings are asked for
    from ferfast.data.augment import AugmentConfig, RandAugmentConfig

#: ``data.format`` values: ``auto`` guesses from the root's files; the others are ``ferfast.data.formats`` names.
DatasetFormat = Literal[
    "auto",
    "rafdb",
    "synthetic",
    "ferplus",
    "affectnet",
    "affectnet7",
    "affectnet8",
    "imagefolder",
    "folder",
    "filelist",
    "mxrec",
]
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

#: the values of ``run.nonfinite`` and ``run.compile_mode`` (and of the engine's ``FitConfig``'s)
NONFINITE_POLICIES: tuple[str, ...] = typing.get_args(NonFinitePolicy)
COMPILE_MODES: tuple[str, ...] = typing.get_args(CompileMode)
#: the counts of :class:`RunConfig` that the engine's ``FitConfig`` shares: setting -> (smallest value, none allowed).
#: One rule for both (``FitConfig`` names ``keep_checkpoints`` ``keep``).
RUN_COUNTS: dict[str, tuple[int, bool]] = {
    "log_every": (0, False),  # 0: epoch records only
    "print_every": (0, False),  # 0: never
    "eval_every": (1, False),
    "save_every": (1, False),
    "save_every_steps": (0, False),  # 0: only at the epochs' ends
    "keep_checkpoints": (0, True),  # none: all, 0: none
}


def check_run_settings(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Check the run settings of ``values`` (:data:`RUN_COUNTS`, ``nonfinite``, ``compile_mode``) by the one rule
    of :class:`RunConfig` and the engine's ``FitConfig``; ``names`` maps a setting to the name an error gives."""
    names = names or {}
    for key, (minimum, allow_none) in RUN_COUNTS.items():
        if key in values:
            _check_int(values[key], names.get(key, key), minimum=minimum, allow_none=allow_none)
    if "nonfinite" in values:
        _check_choice(values["nonfinite"], names.get("nonfinite", "nonfinite"), NONFINITE_POLICIES)
    if "compile_mode" in values:
        _check_choice(values["compile_mode"], names.get("compile_mode", "compile_mode"), COMPILE_MODES)


def _doc(text: str) -> dict[str, str]:
    """A field's metadata: its one-line help, shown by ``--help``."""
    return {"help": text}


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
        metadata=_doc(
            "where the DALI loader decodes and augments: gpu (nvjpeg 'mixed' decoding), cpu, or auto "
            "(gpu when torch sees one); the torch loader always works on the CPU"
        ),
    )

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
            image_size=self.image_size,
            scale=self.scale,
            ratio=self.ratio,
            flip_prob=self.flip_prob,
            rand_augment=rand_augment or RandAugmentConfig(),
        )


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
            "milestones",
            "must be positive and strictly increasing",
            self.milestones,
        )
        _check(0.0 < self.gamma <= 1.0, "gamma", "must be in (0, 1]", self.gamma)
        if self.layer_decay is not None:
            _in_unit(self, "layer_decay", low_open=True, high_open=False)

    def effective_lr(self, effective_batch_size: int) -> float:
        """The absolute learning rate: ``lr``, else ``blr * effective_batch_size / 256`` (MAE's linear scaling
        rule; the effective batch is batch x accum_iter x world size)."""
        if (
            isinstance(effective_batch_size, bool)
            or not isinstance(effective_batch_size, int)
            or effective_batch_size < 1
        ):
            raise ValueError(f"effective_batch_size must be a positive int, got {effective_batch_size!r}")
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
        _check(
            0 <= x1 < x2 and 0 <= y1 < y2,
            "fallback_box",
            "must be x1,y1,x2,y2 with x1 < x2, y1 < y2",
            self.fallback_box,
        )


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
        metadata=_doc(
            "autocast dtype: bf16, fp16 (with a GradScaler), fp32, or auto: bf16 on a GPU that supports "
            "it; on the CPU bf16 only with native bf16 units (AMX/AVX512-BF16) when a short measurement "
            "of the model finds it faster, else fp32 (the choice is printed at start-up)"
        ),
    )
    compile: bool = field(default=False, metadata=_doc("torch.compile the model (the training step is unchanged)"))
    compile_mode: CompileMode = field(
        default="default",
        metadata=_doc(
            "torch.compile mode with run.compile: default, reduce-overhead (CUDA graphs of the forward "
            "and backward passes on a GPU; needs a step without host synchronisation, as ferfast's are) "
            "or max-autotune"
        ),
    )
    resume: Path | None = field(
        default=None,
        metadata=_doc(
            "checkpoint of the first stage run to resume from, when its output folder has none of its own "
            "(a run always continues from its own checkpoint-last.pth)"
        ),
    )
    nonfinite: NonFinitePolicy = field(
        default="stop",
        metadata=_doc(
            "on a NaN/inf loss: stop, or rollback to the last checkpoint; checked on the device and read "
            "every run.log_every steps and at each epoch's end (before its checkpoint), so a bad loss "
            "is caught up to log_every - 1 steps later, and those steps' weights are never saved"
        ),
    )
    log_every: int = field(
        default=20,
        metadata=_doc(
            "log the metrics (means since the last record) every N steps; the only steps that read "
            "tensors on the host (0: epoch records only)"
        ),
    )
    print_every: int = field(
        default=1, metadata=_doc("print a one-line summary every N epochs and after the last (0: never)")
    )
    eval_every: int = field(
        default=1, metadata=_doc("stages 1 and 2: evaluate on data.val_split every N epochs and after the last")
    )
    save_every: int = field(
        default=10,
        metadata=_doc(
            "a numbered checkpoint-<N>.pth (the state after N epochs) every N epochs and after the last "
            "(checkpoint-last.pth: every epoch)"
        ),
    )
    save_every_steps: int = field(
        default=0,
        metadata=_doc(
            "also write checkpoint-last.pth every N steps inside an epoch (at an optimizer step), so that "
            "a killed run of long epochs resumes in the middle of one, exactly; 0: only at the epochs' "
            "ends"
        ),
    )
    keep_checkpoints: int | None = field(
        default=2,
        metadata=_doc(
            "keep the N newest numbered checkpoints (plus checkpoint-last and checkpoint-best; 0: none, none: all)"
        ),
    )
    tensorboard: bool = field(default=True, metadata=_doc("write TensorBoard events next to the JSON-lines log"))

    def validate(self) -> None:
        _nonnegative(self, "seed")
        check_run_settings({name: getattr(self, name) for name in (*RUN_COUNTS, "nonfinite", "compile_mode")})


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
