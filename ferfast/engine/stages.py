"""The stages from a :class:`~ferfast.config.TrainConfig`: data, model, optimizer and schedule in, a trained
model out. Each driver builds its parts and runs :func:`~ferfast.engine.loop.fit` with its step.

- :func:`run_pretrain`: MAE on the unlabeled faces (``data.unlabeled_root``, else the training images).
- :func:`run_stage1`: face-IoU Mixup fine-tuning on the labeled fraction, from a pretrained encoder.
- :func:`run_stage2`: FixMatch with the EMA teacher on labeled + unlabeled, from stage 1's EMA model.
- :func:`evaluate`: accuracy, mean class accuracy, macro-F1 and the confusion matrix (JSON + PNG).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferfast._io import write_text_atomic
from ferfast.config import OptimConfig, TrainConfig, config_to_dict
from ferfast.data import (
    FaceDataset,
    LabelSplit,
    build_loader,
    detect_format,
    load_split,
    open_dataset,
    save_split,
    split_labeled,
)
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import MetricLogger
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.metrics import classification_metrics, save_confusion_png
from ferfast.engine.schedule import cosine_with_warmup, step_decay
from ferfast.engine.steps import StepOutput, pretrain_step, stage1_step, stage2_step, to_device
from ferfast.models import create_model, load_pretrained
from ferfast.ops import FaceIoUMixup

__all__ = [
    "FERData",
    "evaluate",
    "lr_function",
    "make_optimizer",
    "prepare_data",
    "resolve_device",
    "resolve_precision",
    "run_pretrain",
    "run_stage1",
    "run_stage2",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is 'cuda' but torch sees no CUDA GPU")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 autocast on a GPU, fp32 on the CPU (bf16 is slower for small models on the CPU)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16":
        raise ValueError("run.precision 'fp16' is not supported (no GradScaler); use bf16 or fp32")
    return precision


@dataclass
class FERData:
    """The labeled dataset's splits and the label fraction of a run."""

    train: FaceDataset
    test: FaceDataset
    split: LabelSplit
    class_names: tuple[str, ...]

    @property
    def labeled(self) -> FaceDataset:
        return self.train.subset(self.split.labeled)

    @property
    def unlabeled(self) -> FaceDataset:
        return self.train.subset(self.split.unlabeled)


def prepare_data(cfg: TrainConfig) -> FERData:
    """Open the train and test splits and draw (or reuse) the label split file."""
    if cfg.data.root is None:
        raise ValueError("data.root is not set: the folder of the labeled dataset (or of `data synth`'s output)")
    fmt = detect_format(cfg.data.root) if cfg.data.format == "auto" else cfg.data.format
    train = open_dataset(fmt, cfg.data.root, cfg.data.train_split)
    test = open_dataset(fmt, cfg.data.root, cfg.data.test_split)
    path = Path(cfg.data.split_file or Path(cfg.run.output_dir) / "split.json")
    if path.is_file():
        split = load_split(path, labels=train)
    else:
        split = split_labeled(train, cfg.data.labeled_fraction, seed=cfg.data.seed)
        save_split(split, path)
    return FERData(train, test, split, tuple(train.class_names))


def make_optimizer(model: nn.Module, optim: OptimConfig, effective_batch: int) -> tuple[torch.optim.Optimizer, float]:
    """AdamW with MAE's parameter groups (no weight decay on biases, norms and tokens); returns it and its lr."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = optim.effective_lr(effective_batch)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())  # 3x faster on the CPU (DESIGN §5)
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


def _fit_config(cfg: TrainConfig, optim: OptimConfig, epochs: int, base_lr: float, out: Path, device) -> FitConfig:
    return FitConfig(
        epochs=epochs, lr_at=lr_function(optim, epochs, base_lr), output_dir=out,
        precision=resolve_precision(cfg.run.precision, device), clip_grad=optim.clip_grad,
        accum_steps=optim.accum_steps, nonfinite=cfg.run.nonfinite, log_every=cfg.run.log_every,
        keep=cfg.run.keep_checkpoints,
    )  # fmt: skip


def _logger(cfg: TrainConfig, out: Path) -> MetricLogger:
    return MetricLogger(out, tensorboard=None if cfg.run.tensorboard else False)


def run_pretrain(cfg: TrainConfig) -> Path:
    """MAE pretraining; returns the checkpoint (MAE's layout) that stage 1 starts from."""
    device = resolve_device(cfg.run.device)
    torch.manual_seed(cfg.run.seed)
    if cfg.data.unlabeled_root is not None:
        fmt = cfg.data.unlabeled_format
        fmt = detect_format(cfg.data.unlabeled_root) if fmt == "auto" else fmt
        faces = open_dataset(fmt, cfg.data.unlabeled_root, "unlabeled")
    else:
        faces = prepare_data(cfg).train
    p = cfg.pretrain
    mae = create_model(f"mae_{cfg.model.name}", img_size=cfg.data.image_size, norm_pix_loss=p.norm_pix_loss).to(device)
    loader = build_loader("pretrain", faces, backend=cfg.data.loader, batch_size=p.batch_size,
                          num_workers=cfg.data.num_workers, config=cfg.data.augment(), seed=cfg.run.seed)
    opt, lr = make_optimizer(mae, p.optim, p.batch_size * p.optim.accum_steps)
    out = Path(cfg.run.output_dir) / "pretrain"
    with _logger(cfg, out) as logger:
        fit(lambda m, b: pretrain_step(m, b, p.mask_ratio), mae, opt, loader, _fit_config(cfg, p.optim, p.epochs, lr,
            out, device), device=device, args=config_to_dict(cfg), logger=logger, stage="pretrain")  # fmt: skip
    return out / "checkpoint-last.pth"


def _classifier(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    model = create_model(cfg.model.name, img_size=cfg.data.image_size, num_classes=num_classes,
                         drop_path_rate=cfg.model.drop_path, global_pool=cfg.model.global_pool)  # fmt: skip
    return model.to(device)


def run_stage1(cfg: TrainConfig, data: FERData, pretrained: Path | None = None) -> ModelEma:
    """Stage 1: face-IoU Mixup on the labeled images; returns the weights' EMA (evaluated; stage 2's start)."""
    device = resolve_device(cfg.run.device)
    torch.manual_seed(cfg.run.seed)
    s = cfg.stage1
    model = _classifier(cfg, len(data.class_names), device)
    start = pretrained or cfg.model.pretrained
    if start is not None:
        load_pretrained(model, start)
    ema = ModelEma(model, s.ema_decay)
    box = tuple(v / 224.0 for v in s.fallback_box)  # the config gives it in pixels of 224x224, as SSFER does
    mixup = FaceIoUMixup(len(data.class_names), mixup_alpha=s.mixup_alpha, label_smoothing=s.label_smoothing,
                         ssfer_compat=s.ssfer_compat, fallback_box=box, seed=cfg.run.seed)  # fmt: skip

    def reseed(epoch: int) -> None:  # Mixup's own draws: a function of (seed, epoch), so a resumed run repeats them
        mixup.rng = np.random.default_rng([cfg.run.seed, epoch])

    def step(m: nn.Module, b: dict) -> StepOutput:
        if s.mixup:
            return stage1_step(m, b, mixup)
        loss = nn.functional.cross_entropy(m(b["images"]), b["labels"], label_smoothing=s.label_smoothing)
        return StepOutput(loss, {"loss": float(loss.detach())})

    loader = build_loader("stage1", data.labeled, backend=cfg.data.loader, batch_size=s.batch_size,
                          num_workers=cfg.data.num_workers, config=cfg.data.augment(), seed=cfg.run.seed)
    opt, lr = make_optimizer(model, s.optim, s.batch_size * s.optim.accum_steps)
    out = Path(cfg.run.output_dir) / "stage1"
    with _logger(cfg, out) as logger:
        fit(step, model, opt, loader, _fit_config(cfg, s.optim, s.epochs, lr, out, device), device=device, ema=ema,
            args=config_to_dict(cfg), class_names=list(data.class_names), logger=logger, on_epoch_start=reseed,
            stage="stage1")  # fmt: skip
    return ema


def run_stage2(cfg: TrainConfig, data: FERData, start: nn.Module) -> ModelEma:
    """Stage 2: FixMatch from ``start`` (stage 1's EMA model); returns the EMA teacher (the model evaluated)."""
    device = resolve_device(cfg.run.device)
    torch.manual_seed(cfg.run.seed + 1)
    s = cfg.stage2
    student = _classifier(cfg, len(data.class_names), device)
    student.load_state_dict(start.state_dict())
    teacher = ModelEma(student, s.ema_decay)
    loader = build_loader("stage2", data.labeled, unlabeled=data.unlabeled, backend=cfg.data.loader,
                          batch_size=s.batch_size, unlabeled_batch_size=s.unlabeled_batch_size,
                          num_workers=cfg.data.num_workers, config=cfg.data.augment(s.rand_augment()),
                          seed=cfg.run.seed + 1)  # fmt: skip

    def step(m: nn.Module, b: dict) -> StepOutput:
        return stage2_step(m, teacher.module, b, threshold=s.threshold, unlabeled_weight=s.unlabeled_weight,
                           label_smoothing=cfg.stage1.label_smoothing)  # fmt: skip

    opt, lr = make_optimizer(student, s.optim, s.batch_size * s.optim.accum_steps)
    out = Path(cfg.run.output_dir) / "stage2"
    with _logger(cfg, out) as logger:
        fit(step, student, opt, loader, _fit_config(cfg, s.optim, s.epochs, lr, out, device), device=device,
            ema=teacher, args=config_to_dict(cfg), class_names=list(data.class_names), logger=logger,
            stage="stage2")  # fmt: skip
    return teacher


@torch.no_grad()
def evaluate(model: nn.Module, dataset: FaceDataset, cfg: TrainConfig, out_dir: Path | None = None) -> dict:
    """Accuracy, mean class accuracy, macro-F1 and the confusion matrix on ``dataset`` (whole images resized);
    with ``out_dir``, also ``metrics.json`` and ``confusion.png`` there."""
    device = resolve_device(cfg.run.device)
    model = model.to(device).eval()
    loader = build_loader("eval", dataset, backend=cfg.data.loader, batch_size=64, num_workers=cfg.data.num_workers,
                          config=cfg.data.augment())  # fmt: skip
    preds, labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        preds.append(model(batch["images"]).argmax(-1).cpu())
        labels.append(batch["labels"].cpu())
    y_pred, y_true = torch.cat(preds), torch.cat(labels)
    metrics = classification_metrics(y_true, y_pred, len(dataset.class_names))
    result = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in metrics.items()}
    result["class_names"] = list(dataset.class_names)
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, default=float) + "\n")
        save_confusion_png(metrics["confusion"], list(dataset.class_names), out_dir / "confusion.png")
    return result
