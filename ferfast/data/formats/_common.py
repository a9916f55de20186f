"""Helpers the FER formats share: argument checks, image file walks and the post-build steps (sidecar, unreadable)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ferfast.data.base import FaceDataset
from ferfast.data.check import IMG_EXTENSIONS

__all__ = [
    "IMG_EXTENSIONS",
    "IdentityDataset",
    "check_choice",
    "describe_missing",
    "finish_dataset",
    "is_image_file",
    "missing_files",
    "require_dir",
    "require_file",
    "walk_images",
]


def is_image_file(name: str | os.PathLike) -> bool:
    """Whether a file name has one of torchvision's image extensions (any case)."""
    return str(name).lower().endswith(IMG_EXTENSIONS)


def check_choice(value: object, name: str, choices: Sequence[object], owner: str) -> None:
    """Raise ValueError naming the argument when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else FileNotFoundError saying what was expected there."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected the file {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else FileNotFoundError saying what was expected there."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: expected the folder {path}")
    return path


def walk_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (following links, like torchvision), in sorted order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return sorted(found)


def missing_files(root: Path, files: Iterable[str]) -> list[str]:
    """The entries of ``files`` (relative to ``root``) that are not files."""
    return [f for f in files if not (root / f).is_file()]


def describe_missing(missing: Sequence[str], limit: int = 5) -> str:
    """``"3 file(s), e.g. a.jpg, b.jpg"``: a short description of missing files for messages."""
    shown = ", ".join(missing[:limit])
    more = f" (and {len(missing) - limit} more)" if len(missing) > limit else ""
    return f"{len(missing)} file(s): {shown}{more}"


def finish_dataset(ds: FaceDataset, skip_unreadable: bool, attach_sidecar: bool) -> None:
    """The steps every format ends with: fill boxes from ``ROOT/ferfast_boxes.csv`` (formats without box
    annotations) and, with ``skip_unreadable``, drop the files listed in ``ROOT/ferfast_unreadable.txt``.

    Works in place, so the object keeps its format's class.
    """
    if attach_sidecar:
        ds.attach_box_sidecar()
    if skip_unreadable:
        view = ds.skip_unreadable()
        if view is not ds:
            ds.__dict__.update(view.__dict__)


class IdentityDataset(FaceDataset):
    """A face collection that also knows each image's identity (``identities``, -1 when unknown).

    ``subset`` (and so ``without`` / ``skip_unreadable``) keeps ``identities`` aligned with the images.
    """

    identities: np.ndarray

    def subset(self, indices: Iterable[int]) -> IdentityDataset:
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        out = super().subset(idx)
        out.identities = self.identities[idx]
        return out  # type: ignore[return-value]

    @property
    def num_identities(self) -> int:
        """How many distinct identities (ignoring -1)."""
        ids = self.identities[self.identities >= 0]
        return int(np.unique(ids).size)
