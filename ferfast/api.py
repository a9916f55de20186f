"""``ferfast.pretrain / finetune / semisup / evaluate / load_model / predict``: the pipeline in one call each.

Each takes a :class:`~ferfast.config.TrainConfig` (or nothing) plus overrides as keyword arguments,
``section__field=value`` (``data__root="/data/RAF-DB/basic"``, ``stage1__epochs=10``), or a
mapping of dotted keys. Defaults are SSFER's recipes (the README's pipeline section). The names are the command line's::

    import ferfast
    ckpt = ferfast.pretrain(data__unlabeled_root="/data/ms1m", run__output_dir="runs/mae")   # MAE
    ferfast.finetune(data__root="/data/RAF-DB/basic", data__labeled_fraction=0.25,          # stage 1
                     model__pretrained=ckpt, run__output_dir="runs/raf25")
    result = ferfast.semisup(data__root="/data/RAF-DB/basic", run__output_dir="runs/raf25")  # stage 2
    model, class_names = ferfast.load_model("runs/raf25/stage2/checkpoint-last.pth")

A later stage takes its settings from the earlier stage's checkpoint (:mod:`ferfast.engine.handover`): stage 1
the model and image size of the pretraining, stage 2 the model, image size, dataset and label split of stage 1.
``fresh=True`` starts a stage over, moving its old folder aside (:func:`ferfast.engine.runlock.move_aside`).

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

from ferfast.config import TrainConfig, config_from_dict, derive_config
from ferfast.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint, load_latest_checkpoint
from ferfast.engine.dist import distributed
from ferfast.engine.evaluation import evaluate as _evaluate
from ferfast.engine.handover import FROM_PRETRAIN, FROM_STAGE1, check_class_names, hand_over, saved_config
from ferfast.engine.runlock import move_aside, run_lock
from ferfast.engine.stage_data import evaluation_data, prepare_data, raise_on_every_rank, split_path
from ferfast.engine.stages import run_pretrain, run_stage1, run_stage2
from ferfast.engine.summary import say
from ferfast.models import create_model

__all__ = [
    "FINETUNE_STAGES",
    "IMAGE_EXTENSIONS",
    "evaluate",
    "expand_images",
    "finetune",
    "load_model",
    "load_trained",
    "make_config",
    "predict",
    "pretrain",
    "semisup",
]

#: What :func:`finetune` can run.
FINETUNE_STAGES = ("stage1", "stage2")


def make_config(
    config: TrainConfig | None = None, overrides: Mapping[str, Any] | None = None, **kwargs: Any
) -> TrainConfig:
    """A :class:`TrainConfig` from ``config`` (or the defaults), then ``section__field`` kwargs, then dotted
    overrides."""
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a ferfast.config.TrainConfig, got {type(config).__name__}")
    return derive_config(TrainConfig() if config is None else config, overrides or {}, **kwargs)


def _without_resume(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` without ``run.resume``: it applies to the first stage a call runs only."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=None))


def _start_fresh(cfg: TrainConfig, folders: Sequence[str], split: bool, stage: str) -> None:
    """``fresh=True``: move the stage folders a call writes (and, for stage 1, the run's split file) aside into
    ``run.output_dir/previous-<time>/`` (rank 0; :func:`~ferfast.engine.runlock.move_aside`), and say where."""
    from ferfast.engine.dist import is_main_process

    out = Path(cfg.run.output_dir)
    paths = [out / f for f in folders] + ([split_path(cfg)] if split and cfg.data.split_file is None else [])
    moved, error = None, None
    if is_main_process():
        try:
            moved = move_aside(paths, out)
        except (OSError, RuntimeError) as e:
            error = e
    raise_on_every_rank(error, "move the previous run aside")
    if moved is not None:
        names = ", ".join(p.name for p in paths if (moved / p.name).exists())
        say(cfg, stage, [f"fresh start: the previous run's {names} moved to {moved}"])


def pretrain(config: TrainConfig | None = None, *, fresh: bool = False, **kwargs: Any) -> Path:
    """MAE pretraining on unlabeled faces; returns the checkpoint that :func:`finetune` starts from.

    A run continues from its folder's checkpoint (a killed run; "already finished" when it is complete);
    ``fresh=True`` starts over, moving the old ``pretrain`` folder aside (nothing is deleted).
    """
    cfg = make_config(config, **kwargs)
    with distributed():
        if fresh:
            _start_fresh(cfg, ["pretrain"], False, "pretrain")
        if (own := _handover_from_own_folder(cfg, "pretrain")) is not None:
            cfg, lines = own
            say(cfg, "pretrain", lines)
        return run_pretrain(cfg)


#: what a stage continuing in its own folder (a killed or extended run) takes from its own checkpoint
_OWN_KEYS = {"pretrain": FROM_PRETRAIN, "stage1": FROM_STAGE1, "stage2": FROM_STAGE1}


def _handover_from_own_folder(cfg: TrainConfig, stage: str) -> tuple[TrainConfig, list[str]] | None:
    """A stage whose folder has a checkpoint continues from it (:func:`ferfast.engine.loop.fit`), so it takes that
    run's settings, as from an earlier stage: re-running the same command, or one with fewer options, resumes."""
    found = load_latest_checkpoint(Path(cfg.run.output_dir) / stage, mmap=True)  # the config only: fit reads it
    saved = None if found is None else saved_config(found[1])
    if saved is None or saved[1] != stage:
        return None
    cfg, report = hand_over(cfg, saved[0], found[0], _OWN_KEYS[stage], stage)
    return cfg, report.lines()


def _handover_from_pretraining(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """Stage 1 from a ferfast pretraining checkpoint (``model.pretrained``) takes its model and image size."""
    if (own := _handover_from_own_folder(cfg, "stage1")) is not None:
        return own
    if cfg.model.pretrained is None:
        return cfg, []
    found = saved_config(load_checkpoint(cfg.model.pretrained, mmap=True))  # the config; the weights load later
    if found is None or found[1] != "pretrain":  # MAE's or SSFER's own checkpoint: nothing recorded to take
        return cfg, []
    cfg, report = hand_over(cfg, found[0], cfg.model.pretrained, FROM_PRETRAIN, "pretrain")
    return cfg, report.lines()


def _stage1_checkpoint(out: Path) -> Path:
    path = out / "stage1" / LAST_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"stage 2 starts from stage 1's checkpoint, and there is none: {path} does not exist (run stage 1, "
            "`finetune`, with the same run.output_dir first)"
        )
    return path


def finetune(
    config: TrainConfig | None = None, stages: Sequence[str] = ("stage1",), *, fresh: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """Stage 1 (face-IoU Mixup; the CLI's ``finetune``) and/or stage 2 (FixMatch; the CLI's ``semisup``, also
    :func:`semisup`), then the evaluation on the test split.

    ``stages``: ``("stage1",)`` (the default), ``("stage2",)`` or ``("stage1", "stage2")`` for both. Returns
    ``{"metrics": {...}, "checkpoint": Path, "class_names": [...], "config": TrainConfig}`` of the last stage run.

    Stages hand over (:mod:`ferfast.engine.handover`): stage 1 from a ferfast pretraining checkpoint
    (``model.pretrained``) takes its model and image size; stage 2 alone starts from
    ``run.output_dir/stage1/checkpoint-last.pth`` and takes its model, image size, dataset and label split. A
    setting given here that contradicts the checkpoint is a :class:`~ferfast.config.ConfigError` naming both.
    ``run.resume`` applies to the first stage run (a later stage continues from its own folder's checkpoint).
    ``fresh=True`` starts over: the folders of the stages run (stage 1's with stage 2's, which was trained from it,
    and the label split file) are moved aside into ``run.output_dir/previous-<time>/``; nothing is deleted.
    """
    stages = tuple(stages)
    if stages not in (("stage1",), ("stage2",), FINETUNE_STAGES):
        raise ValueError(f"stages must be ('stage1',), ('stage2',) or {FINETUNE_STAGES}, got {stages}")
    cfg = make_config(config, **kwargs)
    out = Path(cfg.run.output_dir)
    last = stages[-1]
    with distributed():
        if fresh:
            folders = ["stage1", "stage2"] if stages[0] == "stage1" else ["stage2"]
            _start_fresh(cfg, folders, stages[0] == "stage1", stages[0])
        if stages[0] == "stage1":
            cfg, lines = _handover_from_pretraining(cfg)
        else:  # stage 1's folder, locked while we read it: refused while another run still trains stage 1
            with run_lock(out / "stage1"):
                source = _stage1_checkpoint(out)
                model, stage1_classes, saved = load_trained(source)
            own = _handover_from_own_folder(cfg, "stage2")
            if own is not None:  # continuing stage 2: its own settings, which were stage 1's
                cfg = own[0]
            cfg, report = hand_over(cfg, saved, source, FROM_STAGE1, "stage1")
            lines = report.lines() if own is None else own[1]
        say(cfg, stages[0], lines)
        data = prepare_data(cfg)
        if stages[0] == "stage2":
            check_class_names(data.class_names, stage1_classes, cfg.data.root, source)
        with run_lock(out / last):  # the last stage's folder stays ours until its evaluation is written
            if "stage1" in stages:
                model = run_stage1(cfg, data).module
            if "stage2" in stages:
                model = run_stage2(cfg if stages[0] == "stage2" else _without_resume(cfg), data, model).module
            metrics = _evaluate(model, data.test, cfg, out / last / "eval")
    return {
        "metrics": metrics,
        "checkpoint": out / last / LAST_CHECKPOINT,
        "class_names": list(data.class_names),
        "config": cfg,
    }


def semisup(config: TrainConfig | None = None, *, fresh: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Stage 2 (FixMatch with the EMA teacher) from ``run.output_dir``'s stage-1 checkpoint, taking its settings;
    the CLI's ``semisup``. Same as ``finetune(config, stages=("stage2",), ...)``."""
    return finetune(config, stages=("stage2",), fresh=fresh, **kwargs)


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
    model = create_model(
        cfg.model.name, img_size=cfg.data.image_size, num_classes=len(class_names), global_pool=cfg.model.global_pool
    )
    state = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    return model.eval(), class_names, cfg


def evaluate(
    model: nn.Module | str | os.PathLike,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
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


#: the file extensions a folder input is searched for (case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_GLOB_CHARS = ("*", "?", "[")


def _folder_images(folder: Path) -> list[Path]:
    """The image files under ``folder``, recursively, by :data:`IMAGE_EXTENSIONS`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def expand_images(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files (kept whatever their extension), folders (searched recursively
    for :data:`IMAGE_EXTENSIONS`, case-insensitive, sorted) and glob patterns (``*``, ``?``, ``[...]``, ``**``;
    expanded here for shells that do not; a matched folder is searched as a folder). In the order given, each
    file once.

    Raises FileNotFoundError naming an input that names nothing (a missing path, a glob matching nothing, a
    folder without images).
    """
    import glob

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    seen: set[Path] = set()
    files: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.exists():
            matches = [path]
        elif any(c in text for c in _GLOB_CHARS):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise FileNotFoundError(f"{text}: the pattern matches no file")
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
        found: list[Path] = []
        for match in matches:
            found += _folder_images(match) if match.is_dir() else [match]
        if not found:
            raise FileNotFoundError(f"{text}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
        for f in found:
            if f not in seen:
                seen.add(f)
                files.append(f)
    return files


def _module_image_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size a module records: ``patch_embed.img_size`` (ferfast's and timm's ViTs) or ``img_size``."""
    for owner in (getattr(model, "patch_embed", None), model):
        size = getattr(owner, "img_size", None) if owner is not None else None
        if isinstance(size, int):
            return size, size
        if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
            return int(size[0]), int(size[1])
    return None


def _prepare(path: Path, detector: Any, margin: float, size: tuple[int, int]) -> tuple[Any, list[float] | None]:
    """One image file decoded, its face found and cropped, resized to ``size`` and scaled to [0, 1]."""
    import torch
    from torchvision.transforms.v2 import functional as F

    from ferfast.data import decode_rgb

    image = decode_rgb(path.read_bytes(), str(path))
    box = detector.detect(image) if detector is not None else None
    crop = torch.from_numpy(np.ascontiguousarray(_face_crop(image, box, margin))).permute(2, 0, 1)
    x = F.resize(crop, list(size), F.InterpolationMode.BICUBIC, antialias=True).float() / 255.0
    return x, None if box is None else [float(v) for v in box]


def predict(
    model: nn.Module | str | os.PathLike,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    detect: bool = True,
    margin: float = 0.2,
    image_size: int | tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    topk: int = 1,
    batch_size: int = 32,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Classify the expression of the face in each image: files, folders and glob patterns (:func:`expand_images`).

    ``model`` is a stage-1 or stage-2 checkpoint (its EMA weights, class names and image size are used) or a
    classifier module: its class names are ``class_names``, else its ``class_names`` attribute, else ``"0"``,
    ``"1"``, ...; its input size is ``image_size``, else its patch embedding's ``img_size`` (a ValueError asks
    for ``image_size`` when it records none). ``image_size`` also overrides a checkpoint's size.

    With ``detect``, the largest face is found with OpenCV's Haar cascade (:class:`ferfast.data.FaceDetector`)
    and cropped with ``margin`` of its size on each side; when none is found, or without ``detect`` (aligned
    crops), the whole image is used. The images are classified ``batch_size`` at a time on ``device`` (default:
    CUDA when available, else the CPU).

    Returns one row per image file, in input order: ``path`` (and ``file``, the same), ``label`` (the top class
    name), ``probability`` (its probability), ``topk`` (the ``topk`` best ``[class name, probability]`` pairs),
    ``probabilities`` (class name -> p), ``box`` (the face box used, relative xyxy, or None for the whole image)
    and ``error`` (None; or, for a file that cannot be read or decoded, the reason, with the prediction fields
    None or empty: the other images are still classified).
    """
    import torch

    from ferfast.data import FACE_MEAN, FACE_STD

    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must be in [0, 1], got {margin}")
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    files = expand_images(images)
    if isinstance(model, nn.Module):
        names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
        size = image_size if image_size is not None else _module_image_size(model)
        if size is None:
            raise ValueError("image_size is needed: the model records no input size (no patch_embed.img_size)")
    else:
        model, names, saved = load_trained(model)
        names = list(class_names) if class_names is not None else names
        size = image_size if image_size is not None else saved.data.image_size
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    detector = None
    if detect:
        from ferfast.data import FaceDetector

        detector = FaceDetector()
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.eval().to(dev)
    mean = torch.tensor(FACE_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(FACE_STD, device=dev).view(1, 3, 1, 1)
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        rows: list[dict[str, Any]] = []
        tensors = []
        for path in chunk:
            row: dict[str, Any] = {
                "path": str(path),
                "file": str(path),
                "label": None,
                "probability": None,
                "topk": [],
                "probabilities": None,
                "box": None,
                "error": None,
            }
            try:
                x, row["box"] = _prepare(path, detector, margin, size)
                tensors.append(x)
            except (OSError, ValueError) as e:  # unreadable, undecodable (UnreadableImageError is a ValueError)
                row["error"] = str(e) if str(e) else type(e).__name__
            rows.append(row)
        if tensors:
            with torch.no_grad():
                batch = (torch.stack(tensors).to(dev) - mean) / std
                probs = model(batch).float().softmax(-1).cpu()
            if names is None or len(names) != probs.shape[1]:
                if names is not None:
                    raise ValueError(f"{len(names)} class names for a model of {probs.shape[1]} classes")
                names = [str(i) for i in range(probs.shape[1])]
            k = min(topk, len(names))
            ok = iter(probs)
            for row in rows:
                if row["error"] is None:
                    p = next(ok)
                    values, indices = p.topk(k)
                    row["topk"] = [[names[int(i)], float(v)] for v, i in zip(values, indices)]
                    row["label"], row["probability"] = row["topk"][0]
                    row["probabilities"] = {n: float(v) for n, v in zip(names, p)}
        results += rows
    return results
