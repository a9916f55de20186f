"""``ferfast.pretrain / finetune / evaluate / load_model``: the pipeline in one call each.

Each takes a :class:`~ferfast.config.TrainConfig` (or nothing) plus overrides as keyword arguments,
``section__field=value`` (``data__root="/data/RAF-DB/basic"``, ``stage1__epochs=10``), or a
mapping of dotted keys. Defaults are SSFER's recipes (DESIGN.md section 4)::

    import ferfast
    ckpt = ferfast.pretrain(data__unlabeled_root="/data/ms1m", run__output_dir="runs/mae")
    result = ferfast.finetune(data__root="/data/RAF-DB/basic", data__labeled_fraction=0.25,
                              model__pretrained=ckpt, run__output_dir="runs/raf25")
    model, class_names = ferfast.load_model("runs/raf25/stage2/checkpoint-last.pth")

Under ``torchrun`` (``torchrun --nproc_per_node N -m ferfast.train finetune ...``, or a script that calls these
functions) :func:`pretrain`, :func:`finetune` and :func:`evaluate` join the process group for the length of the
call (NCCL on GPU, gloo on CPU) and leave it at the end; a group the caller set up stays. Only rank 0 writes
the split file, each stage's ``config.yaml``, checkpoints, logs and the evaluation's files.

Each stage writes into its own folder of ``run.output_dir`` (``pretrain``, ``stage1``, ``stage2``), with the
``config.yaml`` it ran with, and holds that folder's lock while it trains and is evaluated: a second call on the
same folder fails at once naming the holder (:class:`ferfast.engine.runlock.RunLockedError`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ferfast.config import TrainConfig, build_config, config_from_dict
from ferfast.engine.checkpoint import load_checkpoint
from ferfast.engine.dist import distributed
from ferfast.engine.runlock import run_lock
from ferfast.engine.stages import evaluate as _evaluate
from ferfast.engine.stages import evaluation_data, prepare_data, run_pretrain, run_stage1, run_stage2
from ferfast.models import create_model

__all__ = ["STAGES", "evaluate", "finetune", "load_model", "load_trained", "make_config", "predict", "pretrain"]

#: What :func:`finetune` can run.
STAGES = ("stage1", "stage2")


def make_config(
    config: TrainConfig | None = None, overrides: Mapping[str, Any] | None = None, **kwargs: Any
) -> TrainConfig:
    """A :class:`TrainConfig` from ``config`` (or the defaults), then ``section__field`` kwargs, then dotted
    overrides."""
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a ferfast.config.TrainConfig, got {type(config).__name__}")
    base = {} if config is None else {"data": config.data, "model": config.model, "run": config.run,
                                      "pretrain": config.pretrain, "stage1": config.stage1, "stage2": config.stage2}
    return build_config(TrainConfig, overrides=overrides, **{**base, **kwargs})


def _without_resume(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` without ``run.resume``: it applies to the first stage a call runs only."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=None))


def pretrain(config: TrainConfig | None = None, **kwargs: Any) -> Path:
    """MAE pretraining on unlabeled faces; returns the checkpoint that :func:`finetune` starts from."""
    cfg = make_config(config, **kwargs)
    with distributed():
        return run_pretrain(cfg)


def finetune(config: TrainConfig | None = None, stages: Sequence[str] = STAGES, **kwargs: Any) -> dict[str, Any]:
    """Stage 1 (face-IoU Mixup) and/or stage 2 (FixMatch), then the evaluation on the test split.

    Returns ``{"metrics": {...}, "checkpoint": Path, "class_names": [...]}`` of the last stage run.
    Stage 2 alone starts from ``output_dir/stage1``'s checkpoint. ``run.resume`` applies to the first stage run
    (a later stage continues from its own folder's checkpoint, if any).
    """
    stages = tuple(stages)
    if not stages or any(s not in STAGES for s in stages):
        raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {stages}")
    cfg = make_config(config, **kwargs)
    out = Path(cfg.run.output_dir)
    last = stages[-1]
    with distributed():
        data = prepare_data(cfg)
        with run_lock(out / last):  # the last stage's folder stays ours until its evaluation is written
            if "stage1" in stages:
                model = run_stage1(cfg, data).module
            else:  # stage 1's folder, locked while we read it: refused while another run still trains stage 1
                with run_lock(out / "stage1"):
                    model, _ = load_model(out / "stage1" / "checkpoint-last.pth")
            if "stage2" in stages:
                model = run_stage2(cfg if stages[0] == "stage2" else _without_resume(cfg), data, model).module
            metrics = _evaluate(model, data.test, cfg, out / last / "eval")
    return {"metrics": metrics, "checkpoint": out / last / "checkpoint-last.pth", "class_names": list(data.class_names)}


def load_model(checkpoint: str | os.PathLike, *, ema: bool = True) -> tuple[nn.Module, list[str]]:
    """The classifier saved by stage 1 or 2 (its EMA weights by default) and its class names, on the CPU."""
    model, class_names, _ = load_trained(checkpoint, ema=ema)
    return model, class_names


def load_trained(checkpoint: str | os.PathLike, *, ema: bool = True) -> tuple[nn.Module, list[str], TrainConfig]:
    """:func:`load_model` plus the run's config saved in the checkpoint (the file is read once)."""
    ckpt = load_checkpoint(checkpoint)
    args = {k: v for k, v in (ckpt.get("args") or {}).items() if k != "stage"}
    cfg = config_from_dict(TrainConfig, args)
    class_names = list(ckpt.get("class_names") or [])
    if not class_names:
        raise ValueError(f"{checkpoint} has no class names: is it a stage-1 or stage-2 checkpoint of ferfast?")
    model = create_model(cfg.model.name, img_size=cfg.data.image_size, num_classes=len(class_names),
                         global_pool=cfg.model.global_pool)  # fmt: skip
    state = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    return model.eval(), class_names, cfg


def evaluate(
    model: nn.Module | str | os.PathLike, config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Accuracy, mean class accuracy, macro-F1 and the confusion matrix on the test split (``data.test_split``).

    ``model`` is a classifier or a checkpoint path (then its own config is the base of ``config``).
    """
    if not isinstance(model, nn.Module):
        model, _, saved = load_trained(model)
        config = saved if config is None else config
    cfg = make_config(config, **kwargs)
    with distributed():
        return _evaluate(model, evaluation_data(cfg), cfg, None if out_dir is None else Path(out_dir))


def _face_crop(image: np.ndarray, box: np.ndarray | None, margin: float) -> np.ndarray:
    """The face box (relative xyxy) widened by ``margin`` of its size on each side, clamped; the image if no box."""
    if box is None:
        return image
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int((x1 - dx) * w)), max(0, int((y1 - dy) * h))
    right, bottom = min(w, int(np.ceil((x2 + dx) * w))), min(h, int(np.ceil((y2 + dy) * h)))
    return image[top:bottom, left:right] if right > left and bottom > top else image


def predict(
    model: nn.Module | str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    detect: bool = True,
    margin: float = 0.2,
    image_size: int | None = None,
) -> list[dict[str, Any]]:
    """Classify the expression of the face in each image file (or photo).

    With ``detect``, the largest face is found with OpenCV's Haar cascade (:class:`ferfast.data.FaceDetector`)
    and cropped with ``margin`` of its size on each side; when none is found, or without ``detect`` (aligned
    crops), the whole image is used. Returns, per image: ``file``, ``label``, ``probabilities`` (class ->
    p) and ``box`` (relative xyxy or None).
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    from ferfast.data import FACE_MEAN, FACE_STD, decode_rgb

    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must be in [0, 1], got {margin}")
    if isinstance(model, nn.Module):
        class_names = [str(i) for i in range(model.head.out_features)] if hasattr(model, "head") else None
        size = image_size
    else:
        model, class_names, saved = load_trained(model)
        size = image_size or saved.data.image_size
    if size is None:
        raise ValueError("image_size is needed when model is a module (a checkpoint records it)")
    detector = None
    if detect:
        from ferfast.data import FaceDetector

        detector = FaceDetector()
    mean = torch.tensor(FACE_MEAN).view(3, 1, 1)
    std = torch.tensor(FACE_STD).view(3, 1, 1)
    model = model.eval()
    results = []
    for path in images:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"cannot read image {path}: {e.strerror or e}") from None
        image = decode_rgb(data, str(path))
        box = detector.detect(image) if detector is not None else None
        crop = torch.from_numpy(np.ascontiguousarray(_face_crop(image, box, margin))).permute(2, 0, 1)
        x = F.resize(crop, [size, size], F.InterpolationMode.BICUBIC, antialias=True).float() / 255.0
        with torch.no_grad():
            probs = model(((x - mean) / std)[None]).float().softmax(-1)[0]
        names = class_names or [str(i) for i in range(len(probs))]
        results.append({
            "file": str(path), "label": names[int(probs.argmax())], "box": None if box is None else box.tolist(),
            "probabilities": {n: float(p) for n, p in zip(names, probs)},
        })  # fmt: skip
    return results
