"""Folder layouts: a labeled ImageFolder (``ROOT/<split>/<class>/*``) and unlabeled face collections
(a folder tree, a list of files) for MAE pretraining.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ferfast.data.base import CANONICAL_CLASSES, FER7_CLASSES, FER8_CLASSES, FaceDataset, canonical_class_name
from ferfast.data.formats._common import (
    IMG_EXTENSIONS,
    IdentityDataset,
    check_choice,
    describe_missing,
    finish_dataset,
    is_image_file,
    missing_files,
    require_dir,
    require_file,
    walk_images,
)

__all__ = ["FERImageFolder", "FaceFolder", "FileList", "folder_classes", "has_images"]

_IMG_HINT = " ".join(IMG_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    """The class folder names of a split folder, sorted (torchvision's ``find_classes``)."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def folder_classes(names: Sequence[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names and ``{folder: label}`` for class folder names.

    When every folder is an expression name (``happy``, ``Anger``, ...), labels follow the canonical
    order (FER-7, or FER-8 when there is a contempt folder); otherwise the sorted folder names are the
    classes, as in torchvision's ImageFolder.
    """
    canonical = {n: canonical_class_name(n) for n in names}
    if names and all(canonical.values()):
        seen: dict[str, str] = {}
        for n, c in canonical.items():
            if c in seen:
                raise ValueError(f"class folders {seen[c]!r} and {n!r} both name the class {c!r}")
            seen[c] = n
        classes = FER8_CLASSES if "contempt" in seen else FER7_CLASSES
        return classes, {n: CANONICAL_CLASSES.index(c) for n, c in canonical.items()}  # type: ignore[arg-type]
    ordered = tuple(sorted(names))
    return ordered, {n: i for i, n in enumerate(ordered)}


class FERImageFolder(FaceDataset):
    """SSFER's labeled layout ``ROOT/<split>/<class>/<image>`` (images found recursively, torchvision's extensions).

    Args:
        root: the folder holding ``train/`` (and ``test/``).
        split: ``"train"`` or ``"test"``; both use the class list of ``train/`` when it exists.
        skip_unreadable: drop the files listed in ``ROOT/ferfast_unreadable.txt``.

    Expression-named class folders map to the canonical order (see :func:`folder_classes`); the face
    box sidecar ``ROOT/ferfast_boxes.csv`` applies (no box annotations).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", skip_unreadable: bool = True) -> None:
        root = Path(root)
        check_choice(split, "split", ("train", "test"), "FERImageFolder")
        split_dir = require_dir(root / split, f"ImageFolder {split} split")
        folders = _class_dirs(split_dir)
        class_source = root / "train" if (root / "train").is_dir() else split_dir
        class_folders = _class_dirs(class_source)
        if not class_folders:
            raise FileNotFoundError(
                f"ImageFolder: no class folders in {class_source} (expected {class_source}/<class>/)"
            )
        classes, class_labels = folder_classes(class_folders)
        by_expression = all(canonical_class_name(f) for f in class_folders)
        to_label: dict[str, int] = {}
        for folder in folders:
            name = canonical_class_name(folder) if by_expression else None
            if folder in class_labels:
                to_label[folder] = class_labels[folder]
            elif name in classes:  # "Happy" in test/ for "happy" in train/
                to_label[folder] = classes.index(name)
        unknown = [f for f in folders if f not in to_label]
        if unknown:
            raise ValueError(f"ImageFolder: class folder(s) {unknown} of {split_dir} are not classes of {class_source}")
        files: list[str] = []
        labels: list[int] = []
        for folder in folders:
            for path in walk_images(split_dir / folder):
                files.append(path.relative_to(root).as_posix())
                labels.append(to_label[folder])
        if not files:
            raise FileNotFoundError(f"ImageFolder: no images in {split_dir}/<class>/ (extensions {_IMG_HINT})")
        super().__init__(name="imagefolder", root=root, split=split, class_names=classes, files=files, labels=labels)
        self.class_to_idx = dict(to_label)  #: torchvision's name: folder -> label
        finish_dataset(self, skip_unreadable, attach_sidecar=True)


class FaceFolder(IdentityDataset):
    """An unlabeled face collection: every image under ``root`` (e.g. one folder per identity), sorted.

    ``identities`` is the index of each image's top-level folder among those holding images (-1 for
    images directly in ``root``). ``class_names`` only says which label space the pool pairs with.
    """

    def __init__(
        self, root: str | os.PathLike, skip_unreadable: bool = True, class_names: Sequence[str] = FER7_CLASSES
    ) -> None:
        root = require_dir(Path(root), "face folder")
        paths = walk_images(root)
        if not paths:
            raise FileNotFoundError(f"FaceFolder: no images under {root} (extensions {_IMG_HINT})")
        files = [p.relative_to(root).as_posix() for p in paths]
        tops = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        top_index = {t: i for i, t in enumerate(tops)}
        identities = np.array([top_index[f.split("/", 1)[0]] if "/" in f else -1 for f in files], np.int64)
        super().__init__(name="folder", root=root, split="unlabeled", class_names=class_names, files=files)
        self.identities = identities
        finish_dataset(self, skip_unreadable, attach_sidecar=True)


class FileList(IdentityDataset):
    """An unlabeled face collection listed in a text file: one relative path per line.

    Extra whitespace-separated columns (a label, an identity) are ignored, as are blank lines and
    ``#`` comments; paths are relative to ``root`` (default: the list file's folder), so they cannot
    contain spaces. ``missing="raise"`` fails on listed files that do not exist, naming the first few;
    ``"skip"`` drops them with a warning. ``identities`` are all -1.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        root: str | os.PathLike | None = None,
        missing: str = "raise",
        skip_unreadable: bool = True,
        class_names: Sequence[str] = FER7_CLASSES,
    ) -> None:
        list_file = require_file(Path(list_file), "image list file")
        check_choice(missing, "missing", ("raise", "skip"), "FileList")
        root = require_dir(Path(root) if root is not None else list_file.parent, "FileList image root")
        files: list[str] = []
        for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name = line.split()[0]
            path = Path(name)
            if path.is_absolute():
                try:
                    name = path.relative_to(root).as_posix()
                except ValueError:
                    raise ValueError(f"{list_file}: line {lineno}: {name} is not under the image root {root}") from None
            files.append(name)
        if not files:
            raise ValueError(f"{list_file}: lists no images")
        super().__init__(name="filelist", root=root, split="unlabeled", class_names=class_names, files=files)
        self.identities = np.full(len(files), -1, np.int64)
        self.list_file = list_file
        finish_dataset(self, skip_unreadable, attach_sidecar=True)
        absent = missing_files(root, self.files)
        if absent and missing == "raise":
            raise FileNotFoundError(f"{list_file}: {describe_missing(absent)} missing under {root}")
        if absent:
            warnings.warn(f"{list_file}: skipping {describe_missing(absent)} missing under {root}", stacklevel=2)
            view = self.without(absent)
            self.__dict__.update(view.__dict__)
        if not len(self):
            raise ValueError(f"{list_file}: none of the listed images is left")


def has_images(folder: Path) -> bool:
    """Whether any image file lies under ``folder`` (stops at the first)."""
    for _dirpath, _dirnames, filenames in os.walk(folder, followlinks=True):
        if any(is_image_file(f) for f in filenames):
            return True
    return False
