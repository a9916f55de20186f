"""The stages from a :class:`~ferfast.config.TrainConfig`: data, model, optimizer and schedule in, a trained
model out. Each driver builds its parts and runs :func:`~ferfast.engine.loop.fit` with its step.

- :func:`run_pretrain`: MAE on the unlabeled faces (``data.unlabeled_root``, else the training images).
- :func:`run_stage1`: face-IoU Mixup fine-tuning on the labeled fraction, from a pretrained encoder.
- :func:`run_stage2`: FixMatch with the EMA teacher on labeled + unlabeled, from stage 1's EMA model.
- :func:`evaluate`: accuracy, mean class accuracy, macro-F1 and the confusion matrix (JSON + PNG).

Stages 1 and 2 evaluate their EMA model on ``data.val_split`` (else the test split) every ``run.eval_every``
epochs and after the last, and keep ``checkpoint-best.pth`` by validation accuracy. A stage continues from its
own output folder's ``checkpoint-last.pth`` when there is one (a killed run), else from ``run.resume``.

Output folders are safe to share out: each training driver holds an exclusive lock on its stage folder
(``<run.output_dir>/pretrain``, ``stage1``, ``stage2``; :mod:`ferfast.engine.runlock`) so a second run on it fails at
once naming the holder; it writes the stage's ``config.yaml`` there, and a newly drawn label split file, only
after its data, model and loader were built; and a label split file is reused only when it matches the run's
fraction, seed and training set.

Distributed runs (``torchrun``; :mod:`ferfast.api` and the CLI join the process group): rank 0 checks and writes
the split file, every rank draws the same split; every rank builds the same model (same seed) and ``fit`` wraps it in
DDP; with ``blr`` the learning rate follows MAE's rule for the effective batch ``batch_size x world size x
accum_steps``; the training draws (dropout, drop path, MAE's masking noise) are seeded with ``seed + rank``, as
MAE's ``main_pretrain.py`` does. Face-IoU Mixup pairs the images within each rank's local batch (every rank draws
the same ``lam`` per step), so DDP with Mixup is not bit-identical to one process with the global batch; FixMatch's
loss is averaged per rank, then DDP averages the gradients. :func:`evaluate` shards the images over the ranks and
gathers the predictions: the metrics are a single process's.
"""

from __future__ import annotations

import json
import os
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ferfast._io import write_text_atomic
from ferfast.config import ConfigError, OptimConfig, TrainConfig, config_to_dict, save_config
from ferfast.data import (
    FaceDataset,
    LabelSplit,
    build_loader,
    dali_available,
    detect_format,
    load_split,
    open_dataset,
    save_split,
    split_labeled,
)
from ferfast.data.splits import SplitMismatchError
from ferfast.engine.dist import (
    all_gather_tensor,
    broadcast_object,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
)
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import MetricLogger
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.metrics import classification_metrics, save_confusion_png
from ferfast.engine.precision import choose_precision, resolve_precision
from ferfast.engine.prefetch import DevicePrefetcher
from ferfast.engine.runlock import run_lock
from ferfast.engine.schedule import cosine_with_warmup, step_decay
from ferfast.engine.steps import StepOutput, pretrain_step, stage1_step, stage2_step
from ferfast.models import create_model, load_pretrained
from ferfast.ops import FaceIoUMixup

__all__ = [
    "FERData",
    "build_classifier",
    "build_mae",
    "build_mixup",
    "effective_batch_size",
    "evaluate",
    "evaluation_data",
    "lr_function",
    "make_optimizer",
    "param_groups",
    "prepare_data",
    "resolve_device",
    "resolve_precision",
    "run_pretrain",
    "run_stage1",
    "run_stage2",
    "warn_without_face_boxes",
]

#: images per evaluation batch
EVAL_BATCH_SIZE = 64


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is 'cuda' but torch sees no CUDA GPU")
    return torch.device(name)


def _check_launch() -> None:
    """Refuse a multi-process launch without a process group: each process would train alone on the same files."""
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if not is_distributed() and world not in ("", "0", "1"):
        raise RuntimeError(
            f"launched with WORLD_SIZE={world} but no process group is initialised: call "
            "ferfast.engine.init_distributed() first (ferfast.pretrain/finetune and the CLI do)"
        )


def _seed_training_draws(seed: int) -> None:
    """MAE's ``seed + rank`` for the training draws of a distributed run; the weights, drawn before, match on all."""
    if get_world_size() > 1:
        torch.manual_seed(seed + get_rank())


# -------------------------------------------------------------------------------------------------- data


@dataclass
class FERData:
    """The labeled dataset's splits and the label fraction of a run."""

    train: FaceDataset
    test: FaceDataset
    split: LabelSplit
    class_names: tuple[str, ...]
    val: FaceDataset | None = None  #: ``data.val_split``, when set
    #: where the split, newly drawn, is still to be written (:meth:`write_split`); None once it is in a file
    pending_split_file: Path | None = None

    @property
    def labeled(self) -> FaceDataset:
        return self.train.subset(self.split.labeled)

    @property
    def unlabeled(self) -> FaceDataset:
        return self.train.subset(self.split.unlabeled)

    @property
    def validation(self) -> FaceDataset:
        """The split evaluated during training: ``data.val_split``, else the test split."""
        return self.val if self.val is not None else self.test

    def write_split(self) -> Path | None:
        """Write a newly drawn split to its file (rank 0; every rank calls it); returns the file, or None if the
        split came from a file.

        The stage drivers call it once their settings, data and model were validated, so a run that fails before
        leaves no split file. It never replaces a file another run wrote meanwhile: that file is reused if it
        holds the same split, else :class:`~ferfast.data.splits.SplitMismatchError`.
        """
        path = self.pending_split_file
        if path is None:
            return None
        error: BaseException | None = None
        if is_main_process():
            try:
                try:
                    save_split(self.split, path, overwrite=False)
                except FileExistsError:
                    theirs = load_split(path, labels=self.train, fraction=self.split.fraction, seed=self.split.seed)
                    if theirs != self.split:
                        msg = f"{path} was written by another run meanwhile, with another split"
                        raise SplitMismatchError(msg) from None
            except (ValueError, OSError) as e:
                error = e
        _raise_on_every_rank(error, "write the label split")
        self.pending_split_file = None
        return path


def _raise_on_every_rank(error: BaseException | None, what: str) -> None:
    """Raise rank 0's ``error`` on rank 0 and a RuntimeError quoting it on the others (a collective: every rank
    calls it), so that no rank goes on alone and waits forever for the others."""
    if is_distributed():
        message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if message is not None and error is None:
            raise RuntimeError(f"rank 0 could not {what}: {message}")
    if error is not None:
        raise error


def _open_split(cfg: TrainConfig, split: str) -> FaceDataset:
    """One split (``train``, ``test``, ...) of the labeled dataset ``data.root``."""
    if cfg.data.root is None:
        raise ValueError("data.root is not set: the folder of the labeled dataset (or of `data synth`'s output)")
    fmt = detect_format(cfg.data.root) if cfg.data.format == "auto" else cfg.data.format
    return open_dataset(fmt, cfg.data.root, split)


def evaluation_data(cfg: TrainConfig) -> FaceDataset:
    """The split of the final evaluation (``data.test_split``), opened without touching the label split file:
    evaluating a checkpoint writes nothing into its run's folder."""
    return _open_split(cfg, cfg.data.test_split)


def prepare_data(cfg: TrainConfig) -> FERData:
    """Open the train, test (and val) splits and reuse the label split file, or draw a new split.

    The split file (``data.split_file``, else ``<run.output_dir>/split.json``) is reused only when it was drawn
    with the run's ``data.labeled_fraction`` and ``data.seed`` from the same training set (same number of images
    per class); otherwise :class:`~ferfast.data.splits.SplitMismatchError` names both values and the file. A new
    split is drawn in memory and written by the first stage driver that trains on it (:meth:`FERData.write_split`),
    once that stage's settings, data and model were validated: nothing is written here. The draw is a function of
    (labels, fraction, seed), so every rank of a distributed run draws the same split; rank 0 reads and checks an
    existing file, and a failure there is raised on every rank.
    """
    train = _open_split(cfg, cfg.data.train_split)
    test = _open_split(cfg, cfg.data.test_split)
    val = _open_split(cfg, cfg.data.val_split) if cfg.data.val_split is not None else None
    path = Path(cfg.data.split_file or Path(cfg.run.output_dir) / "split.json")
    fraction, seed = cfg.data.labeled_fraction, cfg.data.seed
    error: BaseException | None = None
    exists = False
    if is_main_process():
        try:
            if path.is_file():
                load_split(path, labels=train, fraction=fraction, seed=seed)
                exists = True
        except (ValueError, OSError) as e:
            error = e
    _raise_on_every_rank(error, "read the label split")
    if get_world_size() > 1:
        exists = broadcast_object(exists)
    names = tuple(train.class_names)
    if exists:
        return FERData(train, test, load_split(path, labels=train, fraction=fraction, seed=seed), names, val)
    return FERData(train, test, split_labeled(train, fraction, seed=seed), names, val, pending_split_file=path)


# ----------------------------------------------------------------------------------- models and optimizer


def build_mae(cfg: TrainConfig) -> nn.Module:
    """``mae_<model.name>``; the ``pretrain.decoder_*`` settings that are set replace the model's own decoder's."""
    p = cfg.pretrain
    names = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
    decoder = {name: getattr(p, name) for name in names if getattr(p, name) is not None}
    return create_model(f"mae_{cfg.model.name}", img_size=cfg.data.image_size, norm_pix_loss=p.norm_pix_loss,
                        **decoder)  # fmt: skip


def build_classifier(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The ViT classifier of stages 1 and 2 for the dataset's ``num_classes`` (``model.num_classes`` must agree)."""
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError("model.num_classes", f"is {cfg.model.num_classes}, but the dataset has {num_classes} classes")
    return create_model(cfg.model.name, img_size=cfg.data.image_size, num_classes=num_classes,
                        drop_path_rate=cfg.model.drop_path, global_pool=cfg.model.global_pool)  # fmt: skip


def build_mixup(cfg: TrainConfig, num_classes: int) -> FaceIoUMixup:
    """Stage 1's face-IoU Mixup: pairs within the (local) batch, draws from its own generator (reseeded per epoch)."""
    s = cfg.stage1
    box = tuple(v / 224.0 for v in s.fallback_box)  # the config gives it in pixels of 224x224, as SSFER does
    return FaceIoUMixup(num_classes, mixup_alpha=s.mixup_alpha, label_smoothing=s.label_smoothing,
                        ssfer_compat=s.ssfer_compat, fallback_box=box, seed=cfg.run.seed,
                        pairing=s.mixup_pairing)  # fmt: skip


def warn_without_face_boxes(cfg: TrainConfig, dataset: FaceDataset) -> bool:
    """Warn (once, at start-up) when face-IoU Mixup is on but no image of ``dataset`` has a known face box;
    returns whether it warned.

    Without boxes every image gets the fallback box, every pair's IoU is 1 and the loss's IoU-weighted term on
    the real images, ``(1 - IoU) CE(real)``, is zero: stage 1 silently becomes plain Mixup. The boxes are a
    NumPy array checked here once, never a tensor in the training step (which must not synchronise a GPU).
    """
    if not cfg.stage1.mixup or not len(dataset) or np.isfinite(dataset.boxes).all(axis=1).any():
        return False
    root = cfg.data.root if cfg.data.root is not None else dataset.root
    fmt = f" --format {cfg.data.format}" if cfg.data.format != "auto" else ""
    if is_main_process():
        warnings.warn(
            f"face-IoU Mixup (stage1.mixup) is on, but none of the {len(dataset)} labeled images of {root} has a "
            f"face box: every image gets the fallback box stage1.fallback_box, so every pair's IoU is 1 and the "
            f"IoU-weighted loss on the real images vanishes (plain Mixup). Find and cache the faces' boxes once "
            f"with `python -m ferfast.train data detect {shlex.quote(str(root))}{fmt}`, or set stage1.mixup false",
            UserWarning,
            stacklevel=2,
        )
    return True


def _layer_id(name: str, num_layers: int) -> int:
    """MAE's ``get_layer_id_for_vit``: 0 for the embeddings, ``i + 1`` for ``blocks.i``, ``num_layers`` for the rest."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW's parameter groups as MAE's: no weight decay on 1-d parameters and the model's ``no_weight_decay()``.

    With ``layer_decay`` (MAE's ``util/lr_decay.py`` ``param_groups_lrd``), one group per (layer, decay) whose
    ``lr_scale = layer_decay ** (num_layers - layer_id)``; the schedule's ``set_lr`` multiplies by it.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_decay is None:
        decay = [p for n, p in named if not (p.ndim <= 1 or n in skip)]
        no_decay = [p for n, p in named if p.ndim <= 1 or n in skip]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"layer_decay needs a ViT with .blocks, got {type(model).__name__}")
    num_layers = len(blocks) + 1
    groups: dict[str, dict] = {}
    for name, p in named:
        no_wd = p.ndim <= 1 or name in skip
        layer = _layer_id(name, num_layers)
        group = groups.setdefault(f"layer_{layer}_{'no_decay' if no_wd else 'decay'}", {
            "params": [], "weight_decay": 0.0 if no_wd else weight_decay,
            "lr_scale": layer_decay ** (num_layers - layer),
        })  # fmt: skip
        group["params"].append(p)
    return list(groups.values())


def effective_batch_size(batch_size: int, optim: OptimConfig) -> int:
    """MAE's effective batch: images per step and process x processes x accumulation steps."""
    return batch_size * get_world_size() * optim.accum_steps


def make_optimizer(model: nn.Module, optim: OptimConfig, effective_batch: int) -> tuple[torch.optim.Optimizer, float]:
    """AdamW on :func:`param_groups` (``optim.layer_decay`` included); returns it and its base learning rate."""
    lr = optim.effective_lr(effective_batch)
    groups = param_groups(model, optim.weight_decay, optim.layer_decay)
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())  # 3x faster on the CPU (docs/design.md)
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas, eps=optim.eps, fused=fused), lr


def lr_function(optim: OptimConfig, epochs: int, base_lr: float) -> Callable[[float], float]:
    """The learning rate at a fractional epoch: linear warmup, then cosine / step / constant."""

    def lr_at(epoch: float) -> float:
        if epoch < optim.warmup_epochs:
            return base_lr * epoch / optim.warmup_epochs
        if optim.schedule == "cosine":
            return cosine_with_warmup(epoch, epochs, optim.warmup_epochs, base_lr, optim.min_lr)
        if optim.schedule == "step":
            return step_decay(epoch, optim.milestones, optim.gamma, base_lr)
        return base_lr

    return lr_at


# ------------------------------------------------------------------------------------------ the drivers


#: images per step of ``run.precision=auto``'s CPU measurement (ViT-B/16: ~2 s a step on 2 cores). Smaller batches
#: misjudge small models: on an AVX512-BF16 CPU the demo's classifier measured no bf16 gain at 2 images, 1.1x at 8
#: and 1.25x at 32 (its training batch)
PROBE_BATCH = 8


def _precision_probe(model: nn.Module, cfg: TrainConfig, device: torch.device, mae: bool) -> Callable[[], Tensor]:
    """``run.precision=auto``'s measurement on the CPU: the model's forward on random images, returning a loss."""
    shape = (PROBE_BATCH, 3, cfg.data.image_size, cfg.data.image_size)

    def probe() -> Tensor:
        images = torch.randn(shape, device=device)
        if mae:
            return model(images, mask_ratio=cfg.pretrain.mask_ratio)[0]
        return model(images).float().logsumexp(-1).mean()

    return probe


def _fit_config(cfg: TrainConfig, optim: OptimConfig, epochs: int, base_lr: float, out: Path, device: torch.device,
                model: nn.Module, *, mae: bool = False) -> FitConfig:  # fmt: skip
    """:func:`fit`'s settings for a stage; resolves ``run.precision=auto`` (measuring ``model`` where it must)."""
    precision, why = choose_precision(cfg.run.precision, device, _precision_probe(model, cfg, device, mae),
                                      zero_grad=lambda: model.zero_grad(set_to_none=True))  # fmt: skip
    if get_world_size() > 1:  # a measurement may differ between the ranks: rank 0's choice holds for all
        precision, why = broadcast_object((precision, why))
    augment = cfg.data.augment()
    return FitConfig(
        epochs=epochs, lr_at=lr_function(optim, epochs, base_lr), output_dir=out,
        precision=precision, precision_note=why, clip_grad=optim.clip_grad,
        accum_steps=optim.accum_steps, nonfinite=cfg.run.nonfinite, log_every=cfg.run.log_every,
        keep=cfg.run.keep_checkpoints, save_every=cfg.run.save_every, save_every_steps=cfg.run.save_every_steps,
        eval_every=cfg.run.eval_every,
        compile=cfg.run.compile, compile_mode=cfg.run.compile_mode, print_every=cfg.run.print_every,
        image_mean=augment.mean, image_std=augment.std,
    )  # fmt: skip


def _loader(stage: str, dataset: FaceDataset, cfg: TrainConfig, device: torch.device, **kwargs):
    """``build_loader`` with the run's loader settings: page-locked batches when training on CUDA (asynchronous
    copies), DALI on ``data.dali_device``."""
    dali = cfg.data.loader == "dali" or (cfg.data.loader == "auto" and dali_available())
    if cfg.data.dali_device == "gpu" and not dali:
        why = "data.loader is torch" if cfg.data.loader == "torch" else "DALI is not installed"
        raise ConfigError("data.dali_device", f"is gpu, but {why}: the torch loader decodes on the CPU")
    return build_loader(stage, dataset, backend=cfg.data.loader, device=cfg.data.dali_device,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda", **kwargs)  # fmt: skip


def _resume_from(cfg: TrainConfig) -> Path | None:
    """``run.resume``, checked: a checkpoint that does not exist is an error naming the setting."""
    path = cfg.run.resume
    if path is not None and not Path(path).is_file():
        raise ConfigError("run.resume", f"checkpoint not found: {path}")
    return path


def _logger(cfg: TrainConfig, out: Path) -> MetricLogger:
    return MetricLogger(out, tensorboard=None if cfg.run.tensorboard else False)


def _validator(model: nn.Module, dataset: FaceDataset, cfg: TrainConfig) -> Callable[[int], dict[str, float]]:
    """``fit``'s ``evaluate``: ``model`` (the EMA, updated in place) on ``dataset`` as ``val_*`` scores."""
    loader = _eval_loader(dataset, cfg)
    device = resolve_device(cfg.run.device)

    def scores(epoch: int) -> dict[str, float]:
        y_true, y_pred = _predictions(model.to(device).eval(), loader, len(dataset))
        m = classification_metrics(y_true, y_pred, len(dataset.class_names))
        return {f"val_{k}": float(m[k]) for k in ("accuracy", "mean_class_accuracy", "macro_f1")}

    return scores


def _save_stage_config(cfg: TrainConfig, out: Path) -> None:
    """``config.yaml`` in the stage's folder (rank 0): each stage keeps the settings it ran with, and it is written
    only once the stage's data, model and loader were built, so a run that fails its validation leaves none."""
    if is_main_process():
        save_config(cfg, out / "config.yaml")


def _say(cfg: TrainConfig, stage: str, lines: list[str]) -> None:
    """The start-up summary (rank 0, unless ``run.print_every`` is 0): one ``stage: ...`` line each."""
    if is_main_process() and cfg.run.print_every:
        for line in lines:
            print(f"{stage}: {line}", flush=True)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _describe_model(model: nn.Module, cfg: TrainConfig, name: str) -> str:
    params = sum(p.numel() for p in model.parameters())
    pooling = ""
    if not name.startswith("mae_"):
        pooling = ", mean of the patch tokens (MAE's pooling)" if cfg.model.global_pool else ", [CLS] after norm"
    return f"model {name}: {_count(params)} parameters, {cfg.data.image_size} px images{pooling}"


def _describe_loader(loader: object, cfg: TrainConfig) -> str:
    """The loader's backend, where it decodes, its workers."""
    name = type(loader).__name__
    if "Dali" in name:
        where = getattr(loader, "device", cfg.data.dali_device)
        return f"loader DALI ({where} decoding)"
    workers = cfg.data.num_workers
    return f"loader torch ({workers} worker process{'es' if workers != 1 else ''})" if workers else "loader torch " \
        "(decoding in the main process)"


def _describe_pretrained(start: Path | None, report: object | None) -> str:
    """Where stage 1's weights come from and what loaded (the missing and unexpected keys, by name)."""
    if start is None:
        return "weights: random initialisation (no model.pretrained: training from scratch)"
    missing = list(getattr(report, "missing_keys", []))
    unexpected = list(getattr(report, "unexpected_keys", []))
    ignored = len(getattr(report, "ignored_keys", []))
    interpolated = ", ".join(f"{k} {list(a)} -> {list(b)}" for k, (a, b) in getattr(report, "interpolated", {}).items())
    text = (f"weights: {start}; missing keys (initialised here): {', '.join(missing) or 'none'}; unexpected keys: "
            f"{', '.join(unexpected) or 'none'}; {ignored} pretraining-only keys (decoder...) ignored")  # fmt: skip
    return text + (f"; interpolated {interpolated}" if interpolated else "")


def _describe_data(data: FERData, cfg: TrainConfig) -> list[str]:
    """The labeled dataset, the label split and where it comes from, and the evaluation split."""
    train, split = data.train, data.split
    source = "drawn now" if data.pending_split_file is not None else "from its file"
    where = data.pending_split_file or cfg.data.split_file or Path(cfg.run.output_dir) / "split.json"
    val = data.validation
    which = cfg.data.val_split or cfg.data.test_split
    return [
        f"data {cfg.data.root} ({type(train).__name__}): {len(train)} training images of {len(data.class_names)} "
        f"classes ({', '.join(data.class_names)})",
        f"labels: {len(split.labeled)} labeled ({split.fraction:g} of the training images, seed {split.seed}), "
        f"{len(split.unlabeled)} unlabeled; split {source} ({where})",
        f"validation: {len(val)} images of the {which!r} split after each evaluated epoch",
    ]


def _pretrain_faces(cfg: TrainConfig) -> tuple[FaceDataset, str]:
    """MAE's faces and a line saying which: ``data.unlabeled_root``; else ``<data.root>/unlabeled/`` when it has
    images (``data synth``'s pool); else the labeled dataset's training images."""
    if cfg.data.unlabeled_root is not None:
        fmt = cfg.data.unlabeled_format
        fmt = detect_format(cfg.data.unlabeled_root) if fmt == "auto" else fmt
        faces = open_dataset(fmt, cfg.data.unlabeled_root, "unlabeled")
        return faces, f"data {cfg.data.unlabeled_root} ({fmt}): {len(faces)} unlabeled faces (data.unlabeled_root)"
    if cfg.data.root is not None and (Path(cfg.data.root) / "unlabeled").is_dir():
        pool = Path(cfg.data.root) / "unlabeled"
        faces = open_dataset("folder", pool, "unlabeled")
        if len(faces):
            return faces, (f"data {pool}: {len(faces)} unlabeled faces (the unlabeled/ folder of data.root; set "
                           "data.unlabeled_root to pretrain on another collection)")  # fmt: skip
    if cfg.data.root is None:
        raise ConfigError("data.unlabeled_root", "is not set, nor data.root: pretraining needs faces to train on")
    faces = prepare_data(cfg).train
    return faces, (f"data {cfg.data.root}: its {len(faces)} labeled training images, labels unused (no "
                   "data.unlabeled_root, and no unlabeled/ folder in data.root)")  # fmt: skip


def run_pretrain(cfg: TrainConfig) -> Path:
    """MAE pretraining; returns the checkpoint (MAE's layout) that stage 1 starts from.

    Holds ``<run.output_dir>/pretrain``'s lock (:func:`~ferfast.engine.runlock.run_lock`) while it runs.
    """
    _check_launch()
    out = Path(cfg.run.output_dir) / "pretrain"
    with run_lock(out):
        device = resolve_device(cfg.run.device)
        torch.manual_seed(cfg.run.seed)
        faces, data_line = _pretrain_faces(cfg)
        p = cfg.pretrain
        mae = build_mae(cfg).to(device)
        _seed_training_draws(cfg.run.seed)
        loader = _loader("pretrain", faces, cfg, device, batch_size=p.batch_size, config=cfg.data.augment(),
                         seed=cfg.run.seed)  # fmt: skip
        opt, lr = make_optimizer(mae, p.optim, effective_batch_size(p.batch_size, p.optim))
        fit_cfg = _fit_config(cfg, p.optim, p.epochs, lr, out, device, mae, mae=True)
        _say(cfg, "pretrain", [
            data_line,
            _describe_model(mae, cfg, f"mae_{cfg.model.name}") + f", {p.mask_ratio:.0%} of the patches masked",
            f"{_describe_loader(loader, cfg)}, batch {p.batch_size}, learning rate {lr:.3g} | output {out}",
        ])  # fmt: skip
        _save_stage_config(cfg, out)
        with _logger(cfg, out) as logger:
            fit(lambda m, b: pretrain_step(m, b, p.mask_ratio), mae, opt, loader, fit_cfg, device=device,
                args=config_to_dict(cfg), logger=logger, resume_from=_resume_from(cfg), stage="pretrain")  # fmt: skip
    return out / "checkpoint-last.pth"


def run_stage1(cfg: TrainConfig, data: FERData, pretrained: Path | None = None) -> ModelEma:
    """Stage 1: face-IoU Mixup on the labeled images; returns the weights' EMA (evaluated; stage 2's start).

    Holds ``<run.output_dir>/stage1``'s lock (:func:`~ferfast.engine.runlock.run_lock`) while it runs.
    """
    _check_launch()
    out = Path(cfg.run.output_dir) / "stage1"
    with run_lock(out):
        device = resolve_device(cfg.run.device)
        torch.manual_seed(cfg.run.seed)
        s = cfg.stage1
        model = build_classifier(cfg, len(data.class_names)).to(device)
        start = pretrained or cfg.model.pretrained
        resuming = any(out.glob("checkpoint-*.pth"))  # fit restores the run's own weights: no pretrained load
        report = load_pretrained(model, start) if start is not None and not resuming else None
        ema = ModelEma(model, s.ema_decay)
        mixup = build_mixup(cfg, len(data.class_names))
        warn_without_face_boxes(cfg, data.labeled)
        _seed_training_draws(cfg.run.seed)

        position = [0, 0]  # (epoch, step) of the next batch: Mixup's draws are a function of (seed, epoch, step)

        def reseed(epoch: int, start_step: int) -> None:  # so a resumed run, mid-epoch too, repeats them
            position[:] = [epoch, start_step]

        def step(m: nn.Module, b: dict) -> StepOutput:
            if s.mixup:
                mixup.rng = np.random.default_rng([cfg.run.seed, *position])
                position[1] += 1
                return stage1_step(m, b, mixup)
            loss = nn.functional.cross_entropy(m(b["images"]), b["labels"], label_smoothing=s.label_smoothing)
            return StepOutput(loss, {"loss": loss.detach()})

        loader = _loader("stage1", data.labeled, cfg, device, batch_size=s.batch_size, config=cfg.data.augment(),
                         seed=cfg.run.seed)  # fmt: skip
        opt, lr = make_optimizer(model, s.optim, effective_batch_size(s.batch_size, s.optim))
        fit_cfg = _fit_config(cfg, s.optim, s.epochs, lr, out, device, model)
        validate = _validator(ema.module, data.validation, cfg)
        mixup_line = "face-IoU Mixup off (stage1.mixup false)"
        if s.mixup:
            boxes = int(np.isfinite(data.labeled.boxes).all(axis=1).sum())
            mixup_line = f"face-IoU Mixup on: face boxes known for {boxes} of {len(data.labeled)} labeled images"
        _say(cfg, "stage1", [
            *_describe_data(data, cfg), _describe_model(model, cfg, cfg.model.name),
            f"weights: continuing this stage's own run in {out}" if resuming else
            _describe_pretrained(None if start is None else Path(start), report), mixup_line,
            f"{_describe_loader(loader, cfg)}, batch {s.batch_size}, learning rate {lr:.3g} | output {out}",
        ])  # fmt: skip
        data.write_split()
        _save_stage_config(cfg, out)
        with _logger(cfg, out) as logger:
            fit(step, model, opt, loader, fit_cfg, device=device, ema=ema,
                args=config_to_dict(cfg), class_names=list(data.class_names), logger=logger,
                resume_from=_resume_from(cfg), evaluate=validate, on_epoch_start=reseed, stage="stage1")  # fmt: skip
    return ema


def run_stage2(cfg: TrainConfig, data: FERData, start: nn.Module) -> ModelEma:
    """Stage 2: FixMatch from ``start`` (stage 1's EMA model); returns the EMA teacher (the model evaluated).

    Holds ``<run.output_dir>/stage2``'s lock (:func:`~ferfast.engine.runlock.run_lock`) while it runs.
    """
    _check_launch()
    out = Path(cfg.run.output_dir) / "stage2"
    with run_lock(out):
        device = resolve_device(cfg.run.device)
        torch.manual_seed(cfg.run.seed + 1)
        s = cfg.stage2
        student = build_classifier(cfg, len(data.class_names)).to(device)
        student.load_state_dict(start.state_dict())
        teacher = ModelEma(student, s.ema_decay)
        _seed_training_draws(cfg.run.seed + 1)
        loader = _loader("stage2", data.labeled, cfg, device, unlabeled=data.unlabeled, batch_size=s.batch_size,
                         unlabeled_batch_size=s.unlabeled_batch_size, config=cfg.data.augment(s.rand_augment()),
                         seed=cfg.run.seed + 1)  # fmt: skip

        def step(m: nn.Module, b: dict) -> StepOutput:
            return stage2_step(m, teacher.module, b, threshold=s.threshold, unlabeled_weight=s.unlabeled_weight,
                               label_smoothing=s.label_smoothing)  # fmt: skip

        opt, lr = make_optimizer(student, s.optim, effective_batch_size(s.batch_size, s.optim))
        fit_cfg = _fit_config(cfg, s.optim, s.epochs, lr, out, device, student)
        validate = _validator(teacher.module, data.validation, cfg)
        _say(cfg, "stage2", [
            *_describe_data(data, cfg), _describe_model(student, cfg, cfg.model.name) + ", from stage 1's EMA weights",
            f"FixMatch: pseudo-labels with p >= {s.threshold:g} from the EMA teacher (decay {s.ema_decay:g}), "
            f"unlabeled loss weight {s.unlabeled_weight:g}",
            f"{_describe_loader(loader, cfg)}, batch {s.batch_size} labeled + {s.unlabeled_batch_size} unlabeled, "
            f"learning rate {lr:.3g} | output {out}",
        ])  # fmt: skip
        data.write_split()
        _save_stage_config(cfg, out)
        with _logger(cfg, out) as logger:
            fit(step, student, opt, loader, fit_cfg, device=device,
                ema=teacher, args=config_to_dict(cfg), class_names=list(data.class_names), logger=logger,
                resume_from=_resume_from(cfg), evaluate=validate, stage="stage2")  # fmt: skip
    return teacher


# ------------------------------------------------------------------------------------------- evaluation


def _eval_loader(dataset: FaceDataset, cfg: TrainConfig) -> DevicePrefetcher:
    """Whole images resized, in dataset order, sharded over the ranks (padded by wrapping around), on the run's
    device with their images normalised (the next batch copied while one is evaluated, on CUDA)."""
    device = resolve_device(cfg.run.device)
    augment = cfg.data.augment()
    loader = _loader("eval", dataset, cfg, device, batch_size=EVAL_BATCH_SIZE, config=augment)
    return DevicePrefetcher(loader, device, augment.mean, augment.std)


@torch.no_grad()
def _predictions(model: nn.Module, loader: DevicePrefetcher, num_images: int) -> tuple[Tensor, Tensor]:
    """True and predicted labels of the ``num_images`` images in dataset order, gathered from every rank's shard.

    The eval plan gives rank ``r`` the positions ``r, r + world, ...`` (``DistributedSampler``'s rule, padded by
    wrapping around), so interleaving the ranks' results restores the dataset order and the padding falls at the end.
    """
    loader.set_epoch(0)
    preds, labels = [], []
    for batch in loader:  # on the device, images normalised (a DevicePrefetcher)
        preds.append(model(batch["images"]).argmax(-1))
        labels.append(batch["labels"])

    def in_dataset_order(t: Tensor) -> Tensor:
        return all_gather_tensor(torch.cat(t)).transpose(0, 1).reshape(-1)[:num_images].cpu()

    return in_dataset_order(labels), in_dataset_order(preds)


def evaluate(model: nn.Module, dataset: FaceDataset, cfg: TrainConfig, out_dir: Path | None = None) -> dict:
    """Accuracy, mean class accuracy, macro-F1 and the confusion matrix on ``dataset`` (whole images resized);
    with ``out_dir``, also ``metrics.json`` and ``confusion.png`` there (written by rank 0).

    In a distributed run every rank evaluates its shard and gets the metrics of the whole dataset.
    """
    device = resolve_device(cfg.run.device)
    model = model.to(device).eval()
    y_true, y_pred = _predictions(model, _eval_loader(dataset, cfg), len(dataset))
    metrics = classification_metrics(y_true, y_pred, len(dataset.class_names))
    result = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in metrics.items()}
    result["class_names"] = list(dataset.class_names)
    if out_dir is not None and is_main_process():
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, default=float) + "\n")
        save_confusion_png(metrics["confusion"], list(dataset.class_names), out_dir / "confusion.png")
    return result
