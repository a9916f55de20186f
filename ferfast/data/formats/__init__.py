"""FER datasets in their official on-disk formats, each a :class:`ferfast.data.base.FaceDataset` with canonical
labels (docs/design.md, Datasets and labels).

Labeled: RAF-DB basic (:class:`RAFDB`, also the synthetic generator's layout), FERPlus (:class:`FERPlus`),
AffectNet-7/-8 (:class:`AffectNet`), ImageFolder (:class:`FERImageFolder`). Unlabeled face collections for
pretraining: a folder tree (:class:`FaceFolder`), a file list (:class:`FileList`), insightface's MXNet
records (:class:`MXNetRecord`). :func:`open_dataset` opens any of them by name, :func:`detect_format`
guesses the name from a root folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferfast.data.base import FaceDataset
from ferfast.data.formats.affectnet import AffectNet, find_affectnet_csv
from ferfast.data.formats.ferplus import FERPlus
from ferfast.data.formats.folder import FaceFolder, FERImageFolder, FileList, folder_classes, has_images
from ferfast.data.formats.mxrec import MXNetRecord
from ferfast.data.formats.rafdb import RAFDB, RAFDB_LABEL_FILE

__all__ = [
    "FORMATS",
    "RAFDB",
    "AffectNet",
    "FERImageFolder",
    "FERPlus",
    "FaceFolder",
    "FileList",
    "MXNetRecord",
    "detect_format",
    "folder_classes",
    "open_dataset",
]

_UNLABELED_SPLITS = ("train", "unlabeled")


def _check_unlabeled_split(split: str) -> None:
    if split not in _UNLABELED_SPLITS:
        raise ValueError(
            f"split must be one of {list(_UNLABELED_SPLITS)} for an unlabeled face collection, got {split!r}"
        )


def _unlabeled(cls: Callable[..., FaceDataset]) -> Callable[..., FaceDataset]:
    def open_(root: str | os.PathLike, split: str, **kwargs: Any) -> FaceDataset:
        _check_unlabeled_split(split)
        return cls(root, **kwargs)

    return open_


def _filelist(root: str | os.PathLike, split: str, **kwargs: Any) -> FaceDataset:
    # root is the list file, or (with list_file=) the folder its paths are relative to
    _check_unlabeled_split(split)
    list_file = kwargs.pop("list_file", None)
    if list_file is not None:
        return FileList(list_file, root, **kwargs)
    return FileList(root, **kwargs)


#: ``open_dataset`` names -> ``opener(root, split, **kwargs)``.
FORMATS: dict[str, Callable[..., FaceDataset]] = {
    "rafdb": lambda root, split, **kw: RAFDB(root, split, **kw),
    "synthetic": lambda root, split, **kw: RAFDB(root, split, **kw),
    "ferplus": lambda root, split, **kw: FERPlus(root, split, **kw),
    "affectnet": lambda root, split, **kw: AffectNet(root, split, **kw),
    "affectnet7": lambda root, split, **kw: AffectNet(root, split, num_classes=7, **kw),
    "affectnet8": lambda root, split, **kw: AffectNet(root, split, num_classes=8, **kw),
    "imagefolder": lambda root, split, **kw: FERImageFolder(root, split, **kw),
    "folder": _unlabeled(FaceFolder),
    "filelist": _filelist,
    "mxrec": _unlabeled(MXNetRecord),
}


def open_dataset(fmt: str, root: str | os.PathLike, split: str = "train", **kwargs: Any) -> FaceDataset:
    """Open a dataset by format name (see :data:`FORMATS`); ``kwargs`` go to the format's class.

    ``synthetic`` is RAF-DB's layout (the synthetic generator's output). For the unlabeled collections
    (``folder``, ``filelist``, ``mxrec``) ``split`` must be ``"train"`` or ``"unlabeled"``; ``filelist``'s
    ``root`` is the list file, or the image folder when ``list_file=`` is given.
    """
    try:
        opener = FORMATS[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset format {fmt!r}; valid formats: {sorted(FORMATS)}") from None
    return opener(root, split, **kwargs)


def detect_format(root: str | os.PathLike) -> str:
    """Guess a dataset's format from its root: RAF-DB's label file, FERPlus's ``fer2013new.csv``, AffectNet's
    ``training.csv``, ``train.rec``, ``train/<class>/`` folders, else any images (``folder``)."""
    root = Path(root)
    if root.is_file() and root.suffix == ".rec":
        return "mxrec"
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root} is not a folder")
    if (root / RAFDB_LABEL_FILE).is_file():
        return "rafdb"
    if (root / "fer2013new.csv").is_file():
        return "ferplus"
    for split in ("train", "val"):
        try:
            find_affectnet_csv(root, split)
            return "affectnet"
        except FileNotFoundError:
            pass
    if (root / "train.rec").is_file():
        return "mxrec"
    train = root / "train"
    if train.is_dir() and any(e.is_dir() for e in os.scandir(train)):
        return "imagefolder"
    if has_images(root):
        return "folder"
    raise ValueError(
        f"cannot tell the dataset format of {root}: no {RAFDB_LABEL_FILE}, fer2013new.csv, training.csv, train.rec, "
        "train/<class>/ folders or images"
    )
