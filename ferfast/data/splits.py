"""Label fractions for semi-supervised FER: which training images keep their labels.

SSFER's rule (``fine-tune.py:x_u_split``): per class, ``max(1, round(p * n))`` images keep
their labels, drawn at random; the rest of the training set is the unlabeled pool. A split is
seeded, and written to a JSON file that later runs (and other stages) reuse, so stage 1 and
stage 2 see the same labeled images.

The file records how it was drawn (fraction, seed, number of images and images per class). A run reuses it only
when those match the run's own settings and training set (:meth:`LabelSplit.check_settings`,
:meth:`LabelSplit.check_labels`); otherwise it stops with :class:`SplitMismatchError` naming both values and the
file, instead of silently training on another fraction than the one its config records. Every file of this format
(``ferfast.label_split/1``) has always carried these fields, so there are no older files to guess about: a file
without them is rejected as malformed.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferfast._io import write_text_atomic

__all__ = ["LabelSplit", "SplitMismatchError", "labeled_per_class", "load_split", "save_split", "split_labeled"]

SPLIT_FORMAT = "ferfast.label_split/1"


def class_indices(values: Any, name: str = "labels", num_classes: int | None = None) -> np.ndarray:
    """Class indices (a sequence, array or tensor) as a 1-D int64 array, checked: integer, non-negative, and
    below ``num_classes`` when given; errors name the argument ``name``."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one class index per sample (1-D), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if num_classes is not None:
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has class indices outside [0, {num_classes}): min {arr.min()}, max {arr.max()}")
    elif arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {int(arr.min())}")
    return arr


def _labels_array(labels: Any) -> np.ndarray:
    """Class labels as a 1-D int64 array: a sequence, array or tensor, or a dataset with ``labels``/``targets``."""
    for attr in ("labels", "targets"):
        if not isinstance(labels, (Sequence, np.ndarray)) and hasattr(labels, attr):
            labels = getattr(labels, attr)
            break
    return class_indices(labels, "labels")


def _check_fraction(fraction: object) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return float(fraction)


def labeled_per_class(class_counts: Sequence[int], fraction: float) -> list[int]:
    """SSFER's rule: ``max(1, round(fraction * n))`` labeled images per class (Python's ``round``), 0 for an
    empty class."""
    fraction = _check_fraction(fraction)
    return [min(n, max(1, round(fraction * n))) if n > 0 else 0 for n in class_counts]


class SplitMismatchError(ValueError):
    """A split file drawn with other settings (fraction, seed) or from another training set than the run's."""


#: how to proceed when a split file does not match, appended to :class:`SplitMismatchError`'s message
_MISMATCH_HINT = (
    "a split file is reused only when it matches. Use the file's settings, or another run.output_dir (or "
    "data.split_file), or move or delete the file to draw a new split"
)


@dataclass(frozen=True)
class LabelSplit:
    """A labeled / unlabeled partition of a training set (indices into it, sorted)."""

    labeled: tuple[int, ...]
    unlabeled: tuple[int, ...]
    fraction: float
    seed: int
    class_counts: tuple[int, ...]  #: images per class in the whole training set

    @property
    def num_samples(self) -> int:
        return len(self.labeled) + len(self.unlabeled)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPLIT_FORMAT,
            "fraction": self.fraction,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "class_counts": list(self.class_counts),
            "labeled": list(self.labeled),
            "unlabeled": list(self.unlabeled),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "split") -> LabelSplit:
        """Rebuilds a split, checking that it is one (a partition of ``range(num_samples)``)."""
        if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
            raise ValueError(f"{source}: not a ferfast label split (expected format {SPLIT_FORMAT!r})")
        try:
            labeled = tuple(int(i) for i in data["labeled"])
            unlabeled = tuple(int(i) for i in data["unlabeled"])
            split = cls(
                labeled=labeled,
                unlabeled=unlabeled,
                fraction=_check_fraction(data["fraction"]),
                seed=int(data["seed"]),
                class_counts=tuple(int(n) for n in data["class_counts"]),
            )
            num_samples = int(data["num_samples"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed label split ({type(exc).__name__}: {exc})") from None
        if sorted(labeled + unlabeled) != list(range(num_samples)) or sum(split.class_counts) != num_samples:
            raise ValueError(f"{source}: labeled and unlabeled indices must partition range({num_samples})")
        return split

    def check_labels(self, labels: Any, source: str = "split") -> None:
        """Raises :class:`SplitMismatchError` if ``labels`` (the training set's) are not the ones this split was
        drawn from (another number of images or of images per class)."""
        arr = _labels_array(labels)
        counts = tuple(int(n) for n in np.bincount(arr, minlength=len(self.class_counts))) if arr.size else ()
        if arr.size != self.num_samples or counts != self.class_counts:
            raise SplitMismatchError(
                f"{source} was drawn from {self.num_samples} images with class counts {list(self.class_counts)}, "
                f"but this training set has {arr.size} images with {list(counts)}: {_MISMATCH_HINT}"
            )

    def check_settings(self, fraction: float, seed: int, source: str = "split") -> None:
        """Raises :class:`SplitMismatchError`, naming both values and ``source``, if this split was drawn with
        another labeled ``fraction`` or ``seed`` than the run's (``data.labeled_fraction``, ``data.seed``)."""
        problems = []
        if not math.isclose(self.fraction, float(fraction), rel_tol=1e-9, abs_tol=0.0):
            problems.append(f"labeled fraction {self.fraction:g} (this run: data.labeled_fraction={float(fraction):g})")
        if self.seed != int(seed):
            problems.append(f"seed {self.seed} (this run: data.seed={int(seed)})")
        if problems:
            raise SplitMismatchError(f"{source} was drawn with {' and '.join(problems)}: {_MISMATCH_HINT}")


def split_labeled(labels: Any, fraction: float, seed: int = 0) -> LabelSplit:
    """Keep the labels of a ``fraction`` of each class (SSFER's ``max(1, round(p * n))``), chosen with ``seed``.

    Args:
        labels: the training set's class indices (a sequence, array or tensor), or a dataset with a
            ``labels`` or ``targets`` attribute.
        fraction: in (0, 1]; 1 keeps every label (an empty unlabeled pool).
        seed: the draw is a deterministic function of ``(labels, fraction, seed)``.
    """
    arr = _labels_array(labels)
    fraction = _check_fraction(fraction)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    counts = np.bincount(arr) if arr.size else np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(int(seed))
    labeled: list[int] = []
    for cls, n_keep in enumerate(labeled_per_class(counts.tolist(), fraction)):
        idx = np.flatnonzero(arr == cls)
        labeled.extend(rng.permutation(idx)[:n_keep].tolist())
    keep = set(labeled)
    unlabeled = [i for i in range(arr.size) if i not in keep]
    return LabelSplit(tuple(sorted(labeled)), tuple(unlabeled), fraction, int(seed), tuple(counts.tolist()))


def save_split(split: LabelSplit, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Writes ``split`` as JSON, atomically (a temporary file in the same folder, then ``os.replace``).

    With ``overwrite=False`` an existing file is kept and :class:`FileExistsError` raised: the new file is
    published with a hard link, which fails when the path exists, so two runs drawing a split for one folder at
    once cannot replace each other's (the second then reads and checks the first's). Where the file system has
    no hard links, an existence check then ``os.replace`` (a narrow race) stands in.
    """
    text = json.dumps(split.to_dict())
    path = Path(path)
    if overwrite:
        return write_text_atomic(path, text)
    if path.exists():
        raise FileExistsError(f"label split file exists: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    os.close(fd)
    try:
        write_text_atomic(tmp, text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"label split file exists: {path}") from None
        except OSError:  # no hard links here
            if path.exists():
                raise FileExistsError(f"label split file exists: {path}") from None
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_split(
    path: str | os.PathLike, labels: Any = None, *, fraction: float | None = None, seed: int | None = None
) -> LabelSplit:
    """Reads a split written by :func:`save_split`; with ``labels``, also checks it belongs to that training set,
    and with ``fraction`` / ``seed`` that it was drawn with those (:class:`SplitMismatchError` otherwise)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"label split file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    split = LabelSplit.from_dict(data, source=str(path))
    if fraction is not None or seed is not None:
        split.check_settings(
            split.fraction if fraction is None else fraction, split.seed if seed is None else seed, source=str(path)
        )
    if labels is not None:
        split.check_labels(labels, source=str(path))
    return split
