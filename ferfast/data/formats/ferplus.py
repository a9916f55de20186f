"""FERPlus: FER2013's 48x48 grey faces (``fer2013.csv``) relabelled by 10 annotators (``fer2013new.csv``).

``fer2013.csv`` (header ``emotion,pixels,Usage``) and ``fer2013new.csv`` (header ``Usage,Image name,
neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``) are joined row by row,
as FERPlus's own ``generate_training_data.py`` does: the split is fer2013's ``Usage`` (Training /
PublicTest / PrivateTest = train / val / test), the image name and votes come from fer2013new.csv,
and rows with an empty ``Image name`` are dropped. fer2013's ``emotion`` column is ignored: the
FERPlus votes replace FER2013's labels.

Labels follow FERPlus's reference reader (``FERPlusReader._process_data`` and ``load_folders`` in
microsoft/FERPlus ``src/ferplus.py``), one image at a time over its ten vote columns:

1. Outliers: every column with a single vote is set to 0, ``unknown`` and ``NF`` included.
   "The votes" below are the ones left.
2. ``majority``: the top column must hold more than half of the votes (exactly half is not enough);
   otherwise the image is dropped. It is dropped too when that column is ``unknown`` or ``NF``
   (not a face): a row with 9 ``NF`` votes and 1 ``neutral`` vote is dropped, not labelled neutral.
3. ``probability``: columns are taken from the top down, all the columns tied at a count together,
   until they hold at least 75% of the votes or three columns are taken. Reaching ``unknown`` or
   ``NF`` ends the taking: it is left out when emotions were taken before it (above it or tied with
   it), and it drops the image when it is the top column with no emotion tied with it. The image is
   also dropped when the taken columns hold half of the votes or less, or when ties made more than
   three columns taken. The soft label is the taken emotions' votes normalised to sum to 1: at
   most three classes, and the 75% is where taking stops, not a condition to keep the image.

``labels`` is the emotion with the most votes in the label, ties going to the first one in
fer2013new.csv's column order (as ``np.argmax`` does in the reference), mapped to ferfast's canonical
class order. The reference scores its validation and test sets with ``majority`` labels whatever it
trains with.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ferfast.data.base import FER8_CLASSES, FaceDataset, canonical_class_name
from ferfast.data.formats._common import check_choice, finish_dataset, require_file

__all__ = ["FERPLUS_FOLDERS", "FERPLUS_VOTE_COLUMNS", "FERPlus"]

#: fer2013's ``Usage`` values and FERPlus's image folder for each, per ferfast split name.
FERPLUS_FOLDERS: dict[str, tuple[str, str]] = {
    "train": ("Training", "FER2013Train"),
    "val": ("PublicTest", "FER2013Valid"),
    "test": ("PrivateTest", "FER2013Test"),
}
#: fer2013new.csv's vote columns, in its order (not the canonical order: mapped by name).
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
_EMOTIONS = FERPLUS_VOTE_COLUMNS[:8]
_UNKNOWN = FERPLUS_VOTE_COLUMNS.index("unknown")  # 8; NF is 9: columns from here on are not emotions
#: column j of the 8 emotion votes -> canonical class index
_VOTE_TO_CANONICAL = np.array([FER8_CLASSES.index(canonical_class_name(c)) for c in _EMOTIONS], np.int64)
#: a column with at most this many votes is an outlier (the reference's ``1.0 + sys.float_info.epsilon``)
_OUTLIER_VOTES = 1.0 + sys.float_info.epsilon
_SIDE = 48


def _reference_target(votes: Sequence[float], label_mode: str) -> list[float] | None:
    """One image's label by FERPlus's reference rule (see the module docstring), or None when it is dropped.

    ``votes`` are the 10 columns in fer2013new.csv's order; the result is the 8 emotions in that order,
    summing to 1 (one-hot for ``majority``).
    """
    raw = [0.0 if v < _OUTLIER_VOTES else float(v) for v in votes]  # outlier removal, all ten columns
    total = sum(raw)
    target = [0.0] * len(raw)
    if label_mode == "majority":
        top = max(raw)
        if not top > 0.5 * total:
            return None  # no majority: the reference's "unknown"
        target[raw.index(top)] = top
    else:
        covered, count, emotions_only = 0.0, 0, True
        while covered < 0.75 * total and count < 3 and emotions_only:
            top = max(raw)
            for i, v in enumerate(raw):
                if v != top:
                    continue
                target[i], raw[i] = top, 0.0
                covered += top
                count += 1
                if i >= _UNKNOWN:  # unknown or not-a-face reached: stop taking
                    emotions_only = False
                    if sum(target) > top:  # emotions were taken before it: leave it out
                        target[i] = 0.0
                        count -= 1
                    break
        if sum(target) <= 0.5 * total or count > 3:
            return None  # half of the votes or less, or too many columns: the reference's "unknown"
    if target.index(max(target)) >= _UNKNOWN:
        return None  # the label is unknown or not a face
    kept = target[:_UNKNOWN]
    norm = sum(kept)
    return [v / norm for v in kept]


def _check_header(path: Path, first: list[str], required: tuple[str, ...]) -> list[str]:
    """The header row, checking that the ``required`` columns are there."""
    header = [h.strip() for h in first]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected a header with {list(required)}")
    return header


class _PNGReader:
    """Encodes row ``row`` of a ``[N, 48, 48]`` uint8 array as PNG, so loaders decode it like a file."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    def __call__(self, row: int) -> bytes:
        ok, buf = cv2.imencode(".png", self.pixels[row])
        if not ok:  # pragma: no cover - cv2 encodes any uint8 image
            raise OSError(f"FERPlus: cannot encode row {row} as PNG")
        return buf.tobytes()


class FERPlus(FaceDataset):
    """FERPlus, one split, 8 classes in canonical FER-8 order; images are PNG encodings of the CSV pixels.

    Args:
        root: the folder with ``fer2013.csv`` and ``fer2013new.csv`` (unless both are given explicitly).
        split: ``"train"``, ``"val"`` or ``"test"`` (fer2013 ``Usage`` Training, PublicTest, PrivateTest).
        label_mode: as FERPlus's reference scripts (module docstring), after dropping every column
            with a single vote: ``"majority"``: the column with more than half of the votes, over all
            ten (images whose top column is ``unknown`` or ``NF``, or with no majority, are dropped);
            ``"probability"``: ``soft_labels`` are the top emotions (at most three, stopping at 75%
            of the votes) normalised, images whose top emotions hold half of the votes or less
            dropped, and ``labels`` the top emotion (first in fer2013new.csv's order on a tie).
        fer2013_csv / ferplus_csv: explicit paths of the two CSV files (default: in ``root``).
        skip_unreadable: drop the files listed in ``ROOT/ferfast_unreadable.txt``.

    ``files`` are FERPlus's own image names (``FER2013Train/fer0000000.png``); a pixel row that is not
    48x48 values in 0..255 is skipped with a warning.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        label_mode: str = "majority",
        *,
        fer2013_csv: str | os.PathLike | None = None,
        ferplus_csv: str | os.PathLike | None = None,
        skip_unreadable: bool = True,
    ) -> None:
        check_choice(split, "split", tuple(FERPLUS_FOLDERS), "FERPlus")
        check_choice(label_mode, "label_mode", ("majority", "probability"), "FERPlus")
        if root is None and (fer2013_csv is None or ferplus_csv is None):
            raise ValueError("FERPlus: give root (the folder with the CSVs) or both fer2013_csv and ferplus_csv")
        fer_path = Path(fer2013_csv) if fer2013_csv is not None else Path(root) / "fer2013.csv"  # type: ignore[arg-type]
        new_path = Path(ferplus_csv) if ferplus_csv is not None else Path(root) / "fer2013new.csv"  # type: ignore[arg-type]
        root = Path(root) if root is not None else new_path.parent
        require_file(fer_path, "FER2013 pixels (fer2013.csv)")
        require_file(new_path, "FERPlus votes (fer2013new.csv)")

        names, votes = self._read_votes(new_path)
        targets = np.zeros((len(names), len(_EMOTIONS)), np.float64)  # fer2013new.csv's emotion order
        keep = np.zeros(len(names), bool)
        for i, (name, row_votes) in enumerate(zip(names, votes.tolist())):
            target = _reference_target(row_votes, label_mode) if name else None
            if target is not None:
                keep[i], targets[i] = True, target
        usage, folder = FERPLUS_FOLDERS[split]

        # stream fer2013.csv (about 300 MB): only the kept rows of this split are parsed and kept
        rows: list[int] = []
        images: list[np.ndarray] = []
        bad_lines: list[int] = []
        in_split = 0
        with open(fer_path, newline="", encoding="utf-8-sig") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy warns on trailing garbage; the size check fails
            reader = csv.reader(fh)
            header = _check_header(fer_path, next(reader, []), ("pixels", "Usage"))
            usage_col, pixels_col = header.index("Usage"), header.index("pixels")
            count = 0
            for i, row in enumerate(reader):
                count += 1
                if i >= len(names) or len(row) <= max(usage_col, pixels_col) or row[usage_col].strip() != usage:
                    continue
                in_split += bool(names[i])
                if not keep[i]:
                    continue
                image = _parse_pixels(row[pixels_col])
                if image is None:
                    bad_lines.append(i + 2)
                else:
                    rows.append(i)
                    images.append(image)
        if count != len(names):
            raise ValueError(
                f"FERPlus: {fer_path} has {count} rows but {new_path} has {len(names)}; they are joined "
                "row by row, so they must come from the same FER2013 release"
            )
        if not in_split:
            raise ValueError(f"FERPlus: no {split} images: no row of {fer_path} has Usage {usage!r} and an image name")
        if bad_lines:
            warnings.warn(
                f"FERPlus ({split}): skipping {len(bad_lines)} row(s) of {fer_path} whose pixels are not "
                f"{_SIDE}x{_SIDE} values in 0..255 (lines {bad_lines[:5]})",
                stacklevel=2,
            )
        idx = np.asarray(rows, np.int64)
        pixels = np.stack(images) if images else np.zeros((0, _SIDE, _SIDE), np.uint8)
        soft = None
        if label_mode == "probability":
            soft = np.zeros((len(idx), len(FER8_CLASSES)), np.float32)
            soft[:, _VOTE_TO_CANONICAL] = targets[idx]
        super().__init__(
            name="ferplus",
            root=root,
            split=split,
            class_names=FER8_CLASSES,
            files=[f"{folder}/{names[r]}" for r in rows],
            labels=_VOTE_TO_CANONICAL[targets[idx].argmax(axis=1)],  # ties: first in the CSV's order
            soft_labels=soft,
            reader=_PNGReader(pixels),
        )
        self.label_mode = label_mode
        finish_dataset(self, skip_unreadable, attach_sidecar=True)

    @staticmethod
    def _read_votes(path: Path) -> tuple[list[str], np.ndarray]:
        """fer2013new.csv's image names and ``[N, 10]`` votes in its column order (``FERPLUS_VOTE_COLUMNS``)."""
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = _check_header(path, next(reader, []), ("Image name", *FERPLUS_VOTE_COLUMNS))
            name_col = header.index("Image name")
            vote_cols = [header.index(c) for c in FERPLUS_VOTE_COLUMNS]
            width = max(name_col, *vote_cols) + 1
            names: list[str] = []
            votes: list[list[float]] = []
            for lineno, row in enumerate(reader, 2):
                if len(row) < width:
                    raise ValueError(f"{path}: line {lineno}: expected {len(header)} fields, got {len(row)}")
                try:
                    votes.append([float(row[c]) if row[c].strip() else 0.0 for c in vote_cols])
                except ValueError:
                    raise ValueError(f"{path}: line {lineno}: votes must be numbers, got {row[2:]}") from None
                if not all(0.0 <= v < math.inf for v in votes[-1]):  # NaN fails too
                    raise ValueError(f"{path}: line {lineno}: votes must be non-negative and finite, got {row[2:]}")
                names.append(row[name_col].strip())
        return names, np.asarray(votes, np.float64).reshape(-1, len(FERPLUS_VOTE_COLUMNS))


def _parse_pixels(text: str) -> np.ndarray | None:
    """A 48x48 uint8 image from fer2013's space-separated pixel string, or None when it is not one."""
    try:
        values = np.fromstring(text, dtype=np.int32, sep=" ")
    except ValueError:
        return None
    if values.size != _SIDE * _SIDE or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(_SIDE, _SIDE)
