"""The one dataset contract every FER format maps to: encoded images, canonical labels, face boxes.

A :class:`FaceDataset` is a list of encoded images (JPEG/PNG bytes read from files, CSV pixels or
an MXNet record file), each with a class label in ferfast's canonical order (or -1 when it has
none), optional soft labels (FERPlus votes) and a face box. Loaders (torch and DALI) only ever
see this contract, so every format feeds every loader.

Boxes are ``xyxy``. ``box_units`` says whether they are relative to the image size (``[0, 1]``)
or in pixels of the stored image (AffectNet's CSV, RAF-DB's original images); loaders convert
pixels to relative once they know the image size. A row of NaN means "no face known": loaders use
the whole image, which is what an aligned crop is.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ferfast._io import write_text_atomic

__all__ = [
    "BOX_SIDECAR",
    "CANONICAL_CLASSES",
    "CLASS_ALIASES",
    "FER7_CLASSES",
    "FER8_CLASSES",
    "UNREADABLE_FILE",
    "FaceDataset",
    "canonical_class_name",
    "load_box_sidecar",
    "load_unreadable",
    "save_box_sidecar",
]

#: ferfast's canonical class order (AffectNet's label codes 0-7). The 7-class variant drops contempt.
CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
FER7_CLASSES: tuple[str, ...] = CANONICAL_CLASSES[:7]
FER8_CLASSES: tuple[str, ...] = CANONICAL_CLASSES

#: Other spellings of the canonical classes met in FER datasets and folder layouts (lower case).
CLASS_ALIASES: dict[str, str] = {
    "neutral": "neutral",
    "happiness": "happiness",
    "happy": "happiness",
    "joy": "happiness",
    "sadness": "sadness",
    "sad": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "disgust": "disgust",
    "disgusted": "disgust",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
}

#: The list of unreadable files written by ``python -m ferfast.train data check ROOT`` (in ROOT).
UNREADABLE_FILE = "ferfast_unreadable.txt"
#: Face boxes of a dataset without box annotations (detector pass or synthetic faces), in ROOT.
BOX_SIDECAR = "ferfast_boxes.csv"
_SIDECAR_HEADER = ["file", "x_min", "y_min", "x_max", "y_max"]


def canonical_class_name(name: str) -> str | None:
    """The canonical name of a class folder or label name (``"Happy"`` -> ``"happiness"``), or None."""
    return CLASS_ALIASES.get(name.strip().lower())


def load_unreadable(path: str | os.PathLike) -> set[str]:
    """The file names listed in an unreadable-files list (one per line, ``#`` comments), or an empty set."""
    path = Path(path)
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split("\t")[0])
    return names


def save_box_sidecar(path: str | os.PathLike, files: Sequence[str], boxes: np.ndarray, comment: str = "") -> Path:
    """Write relative xyxy face boxes (NaN = no face found) as a CSV sidecar, atomically.

    Format: optional ``# comment`` lines, then ``file,x_min,y_min,x_max,y_max`` and one row per
    image, coordinates relative to the image size with 6 decimals, empty fields when no face.
    """
    path = Path(path)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(files) != len(boxes):
        raise ValueError(f"save_box_sidecar: {len(files)} files but {len(boxes)} boxes")
    lines = [f"# {c}" for c in comment.splitlines() if c] + [",".join(_SIDECAR_HEADER)]
    for f, b in zip(files, boxes):
        if "," in f or "\n" in f:
            raise ValueError(f"save_box_sidecar: file name {f!r} contains a comma or newline")
        coords = ",".join(f"{v:.6f}" for v in b) if np.isfinite(b).all() else ",,,"
        lines.append(f"{f},{coords}")
    return write_text_atomic(path, "\n".join(lines) + "\n")


def load_box_sidecar(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a box sidecar: ``{file: [x_min, y_min, x_max, y_max]}`` (relative; NaN when no face)."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    header_seen = False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(",")
        if not header_seen:
            if parts != _SIDECAR_HEADER:
                raise ValueError(f"{path}: line {lineno}: expected the header {','.join(_SIDECAR_HEADER)!r}")
            header_seen = True
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}: line {lineno}: expected 5 comma-separated fields, got {len(parts)}")
        try:
            box = np.array([float(v) if v else np.nan for v in parts[1:]], np.float32)
        except ValueError as e:
            raise ValueError(f"{path}: line {lineno}: {e}") from None
        out[parts[0]] = box
    return out


class FaceDataset:
    """Encoded face images with canonical labels and face boxes (see the module docstring).

    Args:
        name: the format's name (``"rafdb"``, ``"ferplus"``, ...), for messages.
        root: the dataset's root folder.
        split: ``"train"``, ``"test"``, ``"val"`` or ``"unlabeled"``.
        class_names: the class names in label order (canonical for the FER formats).
        files: one identifier per image, relative to ``root`` (a path, or ``"file.csv#row"``):
            used to read it, in messages, in box sidecars and in the unreadable list.
        labels: ``[N]`` int64 class indices, -1 where an image has no label.
        boxes: ``[N, 4]`` float32 xyxy face boxes, NaN rows where unknown; None = all unknown.
        box_units: ``"relative"`` or ``"pixel"``.
        soft_labels: ``[N, K]`` float32 label distributions (FERPlus ``probability`` mode), or None.
        reader: ``reader(row) -> bytes`` reading the encoded image of original row ``row``;
            None reads the file ``root / files[row]``.
    """

    def __init__(
        self,
        *,
        name: str,
        root: str | os.PathLike,
        split: str,
        class_names: Sequence[str],
        files: Sequence[str],
        labels: np.ndarray | Sequence[int] | None = None,
        boxes: np.ndarray | None = None,
        box_units: str = "relative",
        soft_labels: np.ndarray | None = None,
        reader: Callable[[int], bytes] | None = None,
    ) -> None:
        n = len(files)
        self.name = name
        self.root = Path(root)
        self.split = split
        self.class_names = tuple(class_names)
        self.files = list(files)
        self.labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if boxes is None:
            boxes = np.full((n, 4), np.nan, np.float32)
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if box_units not in ("relative", "pixel"):
            raise ValueError(f"box_units must be 'relative' or 'pixel', got {box_units!r}")
        self.box_units = box_units
        self.soft_labels = None if soft_labels is None else np.asarray(soft_labels, dtype=np.float32)
        self._reader = reader
        self._rows = np.arange(n, dtype=np.int64)  # original row of each image (subsets keep the reader's rows)
        if len(self.labels) != n or len(self.boxes) != n:
            raise ValueError(f"{name}: {n} files but {len(self.labels)} labels and {len(self.boxes)} boxes")
        if self.soft_labels is not None and self.soft_labels.shape != (n, len(self.class_names)):
            raise ValueError(
                f"{name}: soft_labels must be [{n}, {len(self.class_names)}], got {list(self.soft_labels.shape)}"
            )
        if n and self.labels.max(initial=-1) >= len(self.class_names):
            raise ValueError(f"{name}: label {int(self.labels.max())} out of range for {len(self.class_names)} classes")

    # -- the contract loaders use ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def targets(self) -> np.ndarray:
        """The class labels (torchvision's name; what :func:`ferfast.data.split_labeled` reads)."""
        return self.labels

    def path(self, i: int) -> Path:
        """Where image ``i`` lives (for files; for records and CSV rows, the container plus ``#row``)."""
        return self.root / self.files[i]

    def read_bytes(self, i: int) -> bytes:
        """The encoded image ``i`` (JPEG, PNG, ...). Raises OSError naming the file when it cannot be read."""
        row = int(self._rows[i])
        if self._reader is not None:
            return self._reader(row)
        path = os.path.join(self.root, self.files[i])  # os.path + open: a third of pathlib's cost per image
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as e:
            raise OSError(f"cannot read image {path}: {e.strerror or e}") from e

    def relative_boxes(self, i: int, width: int, height: int) -> np.ndarray:
        """Box ``i`` relative to the image size, ``[0, 0, 1, 1]`` (the whole crop) when unknown."""
        return self.relative_boxes_many(np.array([i]), np.array([[width, height]]))[0]

    def relative_boxes_many(self, indices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Boxes of many images relative to their sizes: ``[N, 4]`` for ``indices`` and ``sizes`` ``[N, 2]`` (W, H);
        ``[0, 0, 1, 1]`` (the whole crop) where a box is unknown."""
        box = self.boxes[np.asarray(indices, dtype=np.int64)].astype(np.float64)
        if self.box_units == "pixel":
            wh = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
            box = box / np.concatenate([wh, wh], axis=1)
        unknown = ~np.isfinite(box).all(axis=1)
        box[unknown] = (0.0, 0.0, 1.0, 1.0)
        return np.clip(box, 0.0, 1.0)

    # -- views ---------------------------------------------------------------------------------
    def subset(self, indices: Iterable[int]) -> FaceDataset:
        """A view of the images at ``indices`` (e.g. a labeled split); reads the same files."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.name}: subset indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}")
        out = copy.copy(self)
        out.files = [self.files[i] for i in idx]
        out.labels = self.labels[idx]
        out.boxes = self.boxes[idx]
        out.soft_labels = None if self.soft_labels is None else self.soft_labels[idx]
        out._rows = self._rows[idx]
        return out

    def without(self, files: Iterable[str]) -> FaceDataset:
        """This dataset minus the images named in ``files`` (e.g. the unreadable list)."""
        drop = set(files)
        if not drop:
            return self
        keep = [i for i, f in enumerate(self.files) if f not in drop]
        return self.subset(keep)

    def skip_unreadable(self, path: str | os.PathLike | None = None) -> FaceDataset:
        """Drop the files listed by ``data check`` (``ROOT/ferfast_unreadable.txt`` by default), with a warning."""
        listed = load_unreadable(self.root / UNREADABLE_FILE if path is None else path)
        out = self.without(listed)
        if len(out) < len(self):
            warnings.warn(
                f"{self.name} ({self.split}): skipping {len(self) - len(out)} unreadable image(s) listed in "
                f"{self.root / UNREADABLE_FILE if path is None else path}",
                stacklevel=2,
            )
        return out

    def attach_box_sidecar(self, path: str | os.PathLike | None = None) -> int:
        """Fill unknown boxes from a sidecar (``ROOT/ferfast_boxes.csv`` by default); returns how many were set.

        Only for datasets whose boxes are relative or all unknown (sidecar boxes are relative).
        """
        path = self.root / BOX_SIDECAR if path is None else Path(path)
        if not path.is_file():
            return 0
        known = np.isfinite(self.boxes).all(axis=1)
        if self.box_units == "pixel" and known.any():
            return 0
        table = load_box_sidecar(path)
        n = 0
        for i, f in enumerate(self.files):
            if not known[i] and f in table:
                self.boxes[i] = table[f]
                n += int(np.isfinite(table[f]).all())
        self.box_units = "relative"
        return n

    def class_counts(self) -> np.ndarray:
        """Images per class (labeled images only)."""
        lab = self.labels[self.labels >= 0]
        return np.bincount(lab, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={list(self.class_names)}, root={str(self.root)!r})"
        )
