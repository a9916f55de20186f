"""The stages from a :class:`~ferfast.config.TrainConfig`: data, model, optimizer and schedule in, a trained
model out. Each driver builds its parts and runs :func:`~ferfast.engine.loop.fit` with its step.

- :func:`run_pretrain`: MAE on the unlabeled faces (``data.unlabeled_root``, else the training images).
- :func:`run_stage1`: face-IoU Mixup fine-tuning on the labeled fraction, from a pretrained encoder.
- :func:`run_stage2`: FixMatch with the EMA teacher on labeled + unlabeled, from stage 1's EMA model.

Their parts each have a module: the data and the label split (:mod:`ferfast.engine.stage_data`), the optimizer and
the learning-rate schedule (:mod:`ferfast.engine.optim`), each stage's step and loss (:mod:`ferfast.engine.steps`),
evaluation (:mod:`ferfast.engine.evaluation`: accuracy, mean class accuracy, macro-F1 and the confusion matrix) and
the start-up summary (:mod:`ferfast.engine.summary`).

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
loss is averaged per rank, then DDP averages the gradients. Evaluation
(:func:`~ferfast.engine.evaluation.evaluate`) shards the images over the ranks and gathers the predictions: the
metrics are a single process's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ferfast.config import ConfigError, OptimConfig, TrainConfig, config_to_dict, save_config
from ferfast.engine.checkpoint import LAST_CHECKPOINT
from ferfast.engine.dist import broadcast_object, get_rank, get_world_size, is_distributed, is_main_process
from ferfast.engine.ema import ModelEma
from ferfast.engine.evaluation import validator
from ferfast.engine.logging import MetricLogger
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.optim import effective_batch_size, lr_function, make_optimizer
from ferfast.engine.precision import choose_precision
from ferfast.engine.runlock import run_lock
from ferfast.engine.stage_data import FERData, _pretrain_faces, resolve_device, stage_loader, warn_without_face_boxes
from ferfast.engine.steps import StepOutput, pretrain_step, stage1_step, stage2_step
from ferfast.engine.summary import describe_data, describe_loader, describe_model, describe_pretrained, say
from ferfast.models import create_model, load_pretrained
from ferfast.ops import FaceIoUMixup

__all__ = [
    "build_classifier",
    "build_mae",
    "build_mixup",
    "resolve_device",
    "run_pretrain",
    "run_stage1",
    "run_stage2",
    "stage1_loader",
]


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


# ------------------------------------------------------------------------------------------------ models


def build_mae(cfg: TrainConfig) -> nn.Module:
    """``mae_<model.name>``; the ``pretrain.decoder_*`` settings that are set replace the model's own decoder's."""
    p = cfg.pretrain
    names = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
    decoder = {name: getattr(p, name) for name in names if getattr(p, name) is not None}
    return create_model(f"mae_{cfg.model.name}", img_size=cfg.data.image_size, norm_pix_loss=p.norm_pix_loss, **decoder)


def build_classifier(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The ViT classifier of stages 1 and 2 for the dataset's ``num_classes`` (``model.num_classes`` must agree)."""
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError("model.num_classes", f"is {cfg.model.num_classes}, but the dataset has {num_classes} classes")
    return create_model(
        cfg.model.name,
        img_size=cfg.data.image_size,
        num_classes=num_classes,
        drop_path_rate=cfg.model.drop_path,
        global_pool=cfg.model.global_pool,
    )


def build_mixup(cfg: TrainConfig, num_classes: int) -> FaceIoUMixup:
    """Stage 1's face-IoU Mixup: pairs within the (local) batch, draws from its own generator (reseeded per epoch)."""
    s = cfg.stage1
    box = tuple(v / 224.0 for v in s.fallback_box)  # the config gives it in pixels of 224x224, as SSFER does
    return FaceIoUMixup(
        num_classes,
        mixup_alpha=s.mixup_alpha,
        label_smoothing=s.label_smoothing,
        ssfer_compat=s.ssfer_compat,
        fallback_box=box,
        seed=cfg.run.seed,
        pairing=s.mixup_pairing,
    )


def stage1_loader(cfg: TrainConfig, data: FERData, device: torch.device) -> Any:
    """Stage 1's loader: the labeled images with the run's augmentation and seed (also what the demo measures the
    face-IoU Mixup pairs on)."""
    return stage_loader(
        "stage1",
        data.labeled,
        cfg,
        device,
        batch_size=cfg.stage1.batch_size,
        config=cfg.data.augment(),
        seed=cfg.run.seed,
    )


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


def _fit_config(
    cfg: TrainConfig,
    optim: OptimConfig,
    epochs: int,
    base_lr: float,
    out: Path,
    device: torch.device,
    model: nn.Module,
    *,
    mae: bool = False,
) -> FitConfig:
    """:func:`fit`'s settings for a stage; resolves ``run.precision=auto`` (measuring ``model`` where it must)."""
    precision, why = choose_precision(
        cfg.run.precision,
        device,
        _precision_probe(model, cfg, device, mae),
        zero_grad=lambda: model.zero_grad(set_to_none=True),
    )
    if get_world_size() > 1:  # a measurement may differ between the ranks: rank 0's choice holds for all
        precision, why = broadcast_object((precision, why))
    augment = cfg.data.augment()
    return FitConfig.from_run(  # the run settings come from cfg.run, checked there by the same rule
        cfg.run,
        epochs=epochs,
        lr_at=lr_function(optim, epochs, base_lr),
        output_dir=out,
        precision=precision,
        precision_note=why,
        clip_grad=optim.clip_grad,
        accum_steps=optim.accum_steps,
        image_mean=augment.mean,
        image_std=augment.std,
    )


def _resume_from(cfg: TrainConfig) -> Path | None:
    """``run.resume``, checked: a checkpoint that does not exist is an error naming the setting."""
    path = cfg.run.resume
    if path is not None and not Path(path).is_file():
        raise ConfigError("run.resume", f"checkpoint not found: {path}")
    return path


def _logger(cfg: TrainConfig, out: Path) -> MetricLogger:
    return MetricLogger(out, tensorboard=None if cfg.run.tensorboard else False)


def _save_stage_config(cfg: TrainConfig, out: Path) -> None:
    """``config.yaml`` in the stage's folder (rank 0): each stage keeps the settings it ran with, and it is written
    only once the stage's data, model and loader were built, so a run that fails its validation leaves none."""
    if is_main_process():
        save_config(cfg, out / "config.yaml")


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
        loader = stage_loader(
            "pretrain", faces, cfg, device, batch_size=p.batch_size, config=cfg.data.augment(), seed=cfg.run.seed
        )
        opt, lr = make_optimizer(mae, p.optim, effective_batch_size(p.batch_size, p.optim))
        fit_cfg = _fit_config(cfg, p.optim, p.epochs, lr, out, device, mae, mae=True)
        say(
            cfg,
            "pretrain",
            [
                data_line,
                describe_model(mae, cfg, f"mae_{cfg.model.name}") + f", {p.mask_ratio:.0%} of the patches masked",
                f"{describe_loader(loader, cfg)}, batch {p.batch_size}, learning rate {lr:.3g} | output {out}",
            ],
        )
        _save_stage_config(cfg, out)
        with _logger(cfg, out) as logger:
            fit(
                lambda m, b: pretrain_step(m, b, p.mask_ratio),
                mae,
                opt,
                loader,
                fit_cfg,
                device=device,
                args=config_to_dict(cfg),
                logger=logger,
                resume_from=_resume_from(cfg),
                stage="pretrain",
            )
    return out / LAST_CHECKPOINT


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
            return stage1_step(m, b, mixup if s.mixup else None, s.label_smoothing)

        loader = stage1_loader(cfg, data, device)
        opt, lr = make_optimizer(model, s.optim, effective_batch_size(s.batch_size, s.optim))
        fit_cfg = _fit_config(cfg, s.optim, s.epochs, lr, out, device, model)
        validate = validator(ema.module, data.validation, cfg)
        mixup_line = "face-IoU Mixup off (stage1.mixup false)"
        if s.mixup:
            boxes = int(np.isfinite(data.labeled.boxes).all(axis=1).sum())
            mixup_line = f"face-IoU Mixup on: face boxes known for {boxes} of {len(data.labeled)} labeled images"
        say(
            cfg,
            "stage1",
            [
                *describe_data(data, cfg),
                describe_model(model, cfg, cfg.model.name),
                f"weights: continuing this stage's own run in {out}"
                if resuming
                else describe_pretrained(None if start is None else Path(start), report),
                mixup_line,
                f"{describe_loader(loader, cfg)}, batch {s.batch_size}, learning rate {lr:.3g} | output {out}",
            ],
        )
        data.write_split()
        _save_stage_config(cfg, out)
        with _logger(cfg, out) as logger:
            fit(
                step,
                model,
                opt,
                loader,
                fit_cfg,
                device=device,
                ema=ema,
                args=config_to_dict(cfg),
                class_names=list(data.class_names),
                logger=logger,
                resume_from=_resume_from(cfg),
                evaluate=validate,
                on_epoch_start=reseed,
                stage="stage1",
            )
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
        loader = stage_loader(
            "stage2",
            data.labeled,
            cfg,
            device,
            unlabeled=data.unlabeled,
            batch_size=s.batch_size,
            unlabeled_batch_size=s.unlabeled_batch_size,
            config=cfg.data.augment(s.rand_augment()),
            seed=cfg.run.seed + 1,
        )

        def step(m: nn.Module, b: dict) -> StepOutput:
            return stage2_step(
                m,
                teacher.module,
                b,
                threshold=s.threshold,
                unlabeled_weight=s.unlabeled_weight,
                label_smoothing=s.label_smoothing,
            )

        opt, lr = make_optimizer(student, s.optim, effective_batch_size(s.batch_size, s.optim))
        fit_cfg = _fit_config(cfg, s.optim, s.epochs, lr, out, device, student)
        validate = validator(teacher.module, data.validation, cfg)
        say(
            cfg,
            "stage2",
            [
                *describe_data(data, cfg),
                describe_model(student, cfg, cfg.model.name) + ", from stage 1's EMA weights",
                f"FixMatch: pseudo-labels with p >= {s.threshold:g} from the EMA teacher (decay {s.ema_decay:g}), "
                f"unlabeled loss weight {s.unlabeled_weight:g}",
                f"{describe_loader(loader, cfg)}, batch {s.batch_size} labeled + {s.unlabeled_batch_size} unlabeled, "
                f"learning rate {lr:.3g} | output {out}",
            ],
        )
        data.write_split()
        _save_stage_config(cfg, out)
        with _logger(cfg, out) as logger:
            fit(
                step,
                student,
                opt,
                loader,
                fit_cfg,
                device=device,
                ema=teacher,
                args=config_to_dict(cfg),
                class_names=list(data.class_names),
                logger=logger,
                resume_from=_resume_from(cfg),
                evaluate=validate,
                stage="stage2",
            )
    return teacher
