"""The labeled data of a run: its splits, the label fraction and its split file, and MAE's unlabeled faces.

:func:`prepare_data` opens ``data.root``'s train, test (and val) splits and reuses the label split file, or draws a
new split that the first stage driver training on it writes (:meth:`FERData.write_split`); a label split file is
reused only when it matches the run's fraction, seed and training set. In a distributed run rank 0 reads and writes
the split file and every rank draws the same split; a failure on rank 0 is raised on every rank.
"""

from __future__ import annotations

import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ferfast.config import ConfigError, TrainConfig
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
from ferfast.engine.dist import broadcast_object, get_world_size, is_distributed, is_main_process

__all__ = ["FERData", "evaluation_data", "prepare_data", "warn_without_face_boxes"]


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
        raise_on_every_rank(error, "write the label split")
        self.pending_split_file = None
        return path


#: the label split file of a run, in ``run.output_dir`` unless ``data.split_file`` names another
SPLIT_FILE = "split.json"


def split_path(cfg: TrainConfig) -> Path:
    """Where the run's label split is kept: ``data.split_file``, else ``<run.output_dir>/split.json``."""
    return Path(cfg.data.split_file or Path(cfg.run.output_dir) / SPLIT_FILE)


def raise_on_every_rank(error: BaseException | None, what: str) -> None:
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
    path = split_path(cfg)
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
    raise_on_every_rank(error, "read the label split")
    if get_world_size() > 1:
        exists = broadcast_object(exists)
    names = tuple(train.class_names)
    if exists:
        return FERData(train, test, load_split(path, labels=train, fraction=fraction, seed=seed), names, val)
    return FERData(train, test, split_labeled(train, fraction, seed=seed), names, val, pending_split_file=path)


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
            return faces, (
                f"data {pool}: {len(faces)} unlabeled faces (the unlabeled/ folder of data.root; set "
                "data.unlabeled_root to pretrain on another collection)"
            )
    if cfg.data.root is None:
        raise ConfigError("data.unlabeled_root", "is not set, nor data.root: pretraining needs faces to train on")
    faces = prepare_data(cfg).train
    return faces, (
        f"data {cfg.data.root}: its {len(faces)} labeled training images, labels unused (no "
        "data.unlabeled_root, and no unlabeled/ folder in data.root)"
    )


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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is 'cuda' but torch sees no CUDA GPU")
    return torch.device(name)


def stage_loader(stage: str, dataset: FaceDataset, cfg: TrainConfig, device: torch.device, **kwargs):
    """``build_loader`` with the run's loader settings: page-locked batches when training on CUDA (asynchronous
    copies), DALI on ``data.dali_device``."""
    dali = cfg.data.loader == "dali" or (cfg.data.loader == "auto" and dali_available())
    if cfg.data.dali_device == "gpu" and not dali:
        why = "data.loader is torch" if cfg.data.loader == "torch" else "DALI is not installed"
        raise ConfigError("data.dali_device", f"is gpu, but {why}: the torch loader decodes on the CPU")
    return build_loader(
        stage,
        dataset,
        backend=cfg.data.loader,
        device=cfg.data.dali_device,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        **kwargs,
    )
