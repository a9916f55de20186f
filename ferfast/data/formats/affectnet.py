"""AffectNet's manually annotated set: ``training.csv`` / ``validation.csv`` with face boxes, and the images.

CSV header: ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,
valence,arousal`` (``facial_landmarks`` is a quoted ``;``-separated list). Expression codes 0-7 are
Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt: ferfast's canonical order. Codes
8-10 (None, Uncertain, Non-Face) are dropped; the 7-class variant also drops Contempt.

AffectNet's test set is not public and papers report on the validation set, so ``split="test"``
is an alias of ``"val"``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ferfast.data.base import FER7_CLASSES, FER8_CLASSES, FaceDataset
from ferfast.data.formats._common import check_choice, finish_dataset

__all__ = ["AFFECTNET_COLUMNS", "AFFECTNET_CSV", "AffectNet", "find_affectnet_csv"]

AFFECTNET_COLUMNS: tuple[str, ...] = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
#: the CSV of each split
AFFECTNET_CSV = {"train": "training.csv", "val": "validation.csv"}
_CSV_DIRS = (".", "Manually_Annotated_file_lists")
_IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", ".")
_DROPPED = (8, 9, 10)  # None, Uncertain, Non-Face
_USED = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")


def find_affectnet_csv(root: str | os.PathLike, split: str) -> Path:
    """The CSV of ``split`` in ``root`` or ``root/Manually_Annotated_file_lists``; error naming both if absent."""
    name = AFFECTNET_CSV["val" if split == "test" else split]
    candidates = [Path(root, d, name) if d != "." else Path(root, name) for d in _CSV_DIRS]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"AffectNet {name} not found: expected one of {[str(c) for c in candidates]}")


def _columns(path: Path, first: list[str]) -> tuple[dict[str, int], bool]:
    """Column indices from the header row, or AffectNet's column order for a headerless file; True if a header."""
    fields = [f.strip() for f in first]
    if set(fields) & set(AFFECTNET_COLUMNS):
        missing = [c for c in _USED if c not in fields]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected the header {','.join(AFFECTNET_COLUMNS)}")
        return {c: fields.index(c) for c in _USED}, True
    # some copies of validation.csv have no header: accept a data row in AffectNet's column order
    if len(fields) == len(AFFECTNET_COLUMNS) and all(_is_number(v) for v in fields[1:5]):
        return {c: AFFECTNET_COLUMNS.index(c) for c in _USED}, False
    raise ValueError(f"{path}: missing header; expected the columns {','.join(AFFECTNET_COLUMNS)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class AffectNet(FaceDataset):
    """AffectNet (manually annotated), one split, 7 or 8 classes in canonical order, pixel face boxes.

    Args:
        root: the AffectNet folder; the CSV is looked up in ``root/`` then ``root/Manually_Annotated_file_lists/``,
            the images in ``root/Manually_Annotated_Images/``, ``root/Manually_Annotated/Manually_Annotated_Images/``
            then ``root/`` (the first that holds the listed files).
        split: ``"train"`` (training.csv) or ``"val"`` (validation.csv); ``"test"`` = ``"val"``.
        num_classes: 8 keeps Contempt, 7 drops it.
        skip_unreadable: drop the files listed in ``ROOT/ferfast_unreadable.txt``.

    Boxes are the CSV's faces, ``xyxy = (face_x, face_y, face_x + face_width, face_y + face_height)`` in pixels.
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", num_classes: int = 8, skip_unreadable: bool = True
    ) -> None:
        root = Path(root)
        check_choice(split, "split", ("train", "val", "test"), "AffectNet")
        check_choice(num_classes, "num_classes", (7, 8), "AffectNet")
        split = "val" if split == "test" else split
        csv_path = find_affectnet_csv(root, split)
        classes = FER8_CLASSES if num_classes == 8 else FER7_CLASSES

        paths: list[str] = []
        labels: list[int] = []
        boxes: list[list[float]] = []
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            first = next(reader, None)
            if first is None:
                raise ValueError(f"{csv_path}: empty file; expected the header {','.join(AFFECTNET_COLUMNS)}")
            cols, has_header = _columns(csv_path, first)
            rows = reader if has_header else [first, *reader]
            width = max(cols.values()) + 1
            for lineno, row in enumerate(rows, 2 if has_header else 1):
                if not row:
                    continue
                if len(row) < width:
                    raise ValueError(
                        f"{csv_path}: line {lineno}: expected {len(AFFECTNET_COLUMNS)} fields, got {len(row)}"
                    )
                code = row[cols["expression"]].strip()
                if not code.lstrip("-").isdigit() or not 0 <= int(code) <= 10:
                    raise ValueError(f"{csv_path}: line {lineno}: expression code {code!r} must be 0-10")
                label = int(code)
                if label in _DROPPED or label >= num_classes:
                    continue
                try:
                    x, y, w, h = (float(row[cols[c]]) for c in ("face_x", "face_y", "face_width", "face_height"))
                except ValueError:
                    raise ValueError(
                        f"{csv_path}: line {lineno}: face_x/face_y/face_width/face_height must be numbers"
                    ) from None
                paths.append(row[cols["subDirectory_filePath"]].strip().lstrip("/"))
                labels.append(label)
                boxes.append([x, y, x + w, y + h])
        if not paths:
            raise ValueError(f"{csv_path}: no images with expression codes 0-{num_classes - 1}")

        image_dir = self._find_image_dir(root, paths)
        prefix = "" if image_dir == "." else f"{image_dir}/"
        super().__init__(
            name=f"affectnet{num_classes}",
            root=root,
            split=split,
            class_names=classes,
            files=[prefix + p for p in paths],
            labels=labels,
            boxes=np.asarray(boxes, np.float32),
            box_units="pixel",
        )
        self.csv_path = csv_path
        finish_dataset(self, skip_unreadable, attach_sidecar=False)

    @staticmethod
    def _find_image_dir(root: Path, paths: list[str], probe: int = 8) -> str:
        """The first candidate image folder holding the first listed files (a few: some AffectNet copies miss files)."""
        for cand in _IMAGE_DIRS:
            base = root if cand == "." else root / cand
            if base.is_dir() and any((base / p).is_file() for p in paths[:probe]):
                return cand
        tried = [str(root / c) if c != "." else str(root) for c in _IMAGE_DIRS]
        raise FileNotFoundError(
            f"AffectNet images not found: none of {tried} holds {paths[0]} (or the next listed files)"
        )
