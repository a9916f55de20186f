"""RAF-DB basic (Real-world Affective Faces), in its official layout; also the synthetic generator's layout.

::

    ROOT/EmoLabel/list_patition_label.txt          # (sic) "train_00001.jpg 5", "test_0001.jpg 3"
    ROOT/Image/aligned/train_00001_aligned.jpg     # 100x100 aligned crops
    ROOT/Image/original/train_00001.jpg            # the original photos
    ROOT/Annotation/boundingbox/train_00001_boundingbox.txt   # "x_min y_min x_max y_max" (pixels)

RAF-DB's label codes 1-7 are Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral; they are
mapped to ferfast's canonical FER-7 order. The split is the file name's prefix (``train_`` / ``test_``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ferfast.data.base import FER7_CLASSES, FaceDataset
from ferfast.data.formats._common import (
    check_choice,
    describe_missing,
    finish_dataset,
    missing_files,
    require_dir,
    require_file,
)

__all__ = ["RAFDB", "RAFDB_CLASSES", "RAFDB_LABEL_FILE"]

#: RAF-DB's label file, relative to the dataset root ("patition" is RAF-DB's spelling).
RAFDB_LABEL_FILE = "EmoLabel/list_patition_label.txt"
#: RAF-DB's classes in the order of its label codes 1..7.
RAFDB_CLASSES: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
_CODE_TO_CANONICAL = {code: FER7_CLASSES.index(name) for code, name in enumerate(RAFDB_CLASSES, start=1)}
_SPLITS = ("train", "test")


def _read_box(path: Path) -> list[float]:
    """One RAF-DB bounding box file: ``x_min y_min x_max y_max`` in pixels of the original image."""
    try:
        values = path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        raise FileNotFoundError(f"RAF-DB bounding box not found: expected the file {path}") from None
    try:
        box = [float(v) for v in values[:4]]
    except ValueError:
        box = []
    if len(box) != 4:
        raise ValueError(f"{path}: expected 'x_min y_min x_max y_max' (4 numbers), got {' '.join(values)!r}")
    return box


class RAFDB(FaceDataset):
    """RAF-DB basic, one split, labels in canonical FER-7 order.

    Args:
        root: the RAF-DB ``basic`` folder (with ``EmoLabel/`` and ``Image/``).
        split: ``"train"`` or ``"test"`` (the label file's name prefixes).
        aligned: True reads the 100x100 aligned crops (no box annotation: the face box sidecar
            ``ROOT/ferfast_boxes.csv`` applies, else the whole crop); False reads the original
            photos with their pixel boxes from ``Annotation/boundingbox/``.
        skip_unreadable: drop the files listed in ``ROOT/ferfast_unreadable.txt``.
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", aligned: bool = True, skip_unreadable: bool = True
    ) -> None:
        root = Path(root)
        check_choice(split, "split", _SPLITS, "RAF-DB")
        label_file = require_file(root / RAFDB_LABEL_FILE, "RAF-DB label file")
        image_dir = require_dir(root / "Image" / ("aligned" if aligned else "original"), "RAF-DB image folder")
        stems, labels = self._read_labels(label_file, split)
        sub = "aligned" if aligned else "original"
        files = [f"Image/{sub}/{s}_aligned.jpg" if aligned else f"Image/{sub}/{s}.jpg" for s in stems]
        boxes = None
        if not aligned:
            box_dir = require_dir(root / "Annotation" / "boundingbox", "RAF-DB bounding box folder")
            boxes = np.array([_read_box(box_dir / f"{s}_boundingbox.txt") for s in stems], np.float32).reshape(-1, 4)
        super().__init__(
            name="rafdb",
            root=root,
            split=split,
            class_names=FER7_CLASSES,
            files=files,
            labels=labels,
            boxes=boxes,
            box_units="relative" if aligned else "pixel",
        )
        self.aligned = aligned
        finish_dataset(self, skip_unreadable, attach_sidecar=aligned)
        missing = missing_files(root, self.files)
        if missing:
            raise FileNotFoundError(
                f"RAF-DB: {describe_missing(missing)} listed in {label_file} missing in {image_dir}"
            )

    @staticmethod
    def _read_labels(label_file: Path, split: str) -> tuple[list[str], list[int]]:
        """The image stems and canonical labels of ``split``, in the label file's order."""
        stems: list[str] = []
        labels: list[int] = []
        for lineno, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{label_file}: line {lineno}: expected '<image>.jpg <label 1-7>', got {line!r}")
            name, code = parts
            prefix = name.split("_", 1)[0]
            if prefix not in _SPLITS:
                raise ValueError(f"{label_file}: line {lineno}: image name {name!r} must start with train_ or test_")
            if not code.isdigit() or int(code) not in _CODE_TO_CANONICAL:
                raise ValueError(f"{label_file}: line {lineno}: label code {code!r} of {name} must be 1-7")
            if prefix == split:
                stems.append(Path(name).stem)
                labels.append(_CODE_TO_CANONICAL[int(code)])
        if not stems:
            raise ValueError(f"{label_file}: no {split}_* images listed")
        return stems, labels
