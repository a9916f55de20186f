"""Evaluation metrics of FER on a test split: accuracy, mean class accuracy, macro-F1 and the confusion matrix.

Macro-F1 follows scikit-learn's ``f1_score(average="macro", zero_division=0)``: classes that occur in neither
``y_true`` nor ``y_pred`` are left out of the average, a class that is only predicted scores 0. Mean class
accuracy averages the recall of the classes present in ``y_true``. The confusion matrix can be drawn as a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ferfast._draw import draw_text, fit_text, load_font, png_path, save_png
from ferfast.data.splits import class_indices

__all__ = ["classification_metrics", "confusion_matrix", "confusion_png_size", "save_confusion_png"]


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (int64, ``num_classes`` square)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    t = class_indices(y_true, "y_true", num_classes)
    p = class_indices(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.size} and {p.size}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def classification_metrics(y_true: Any, y_pred: Any, num_classes: int) -> dict[str, Any]:
    """Accuracy, mean class accuracy, macro-F1, per-class accuracy / F1 and the confusion matrix.

    ``per_class_accuracy`` is NaN for a class absent from ``y_true``; ``support`` counts each class's samples.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    total = int(cm.sum())
    if total == 0:
        raise ValueError("y_true is empty: no samples to evaluate")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # true samples per class
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_acc = np.where(support > 0, tp / support, np.nan)
        denom = 2 * tp + (predicted - tp) + (support - tp)  # 2tp + fp + fn
        per_class_f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    present = support > 0
    in_average = present | (predicted > 0)  # sklearn's default labels: those in y_true or y_pred
    return {
        "accuracy": float(tp.sum() / total),
        "mean_class_accuracy": float(per_class_acc[present].mean()),
        "macro_f1": float(per_class_f1[in_average].mean()),
        "per_class_accuracy": [float(v) for v in per_class_acc],
        "per_class_f1": [float(v) for v in per_class_f1],
        "support": [int(v) for v in support],
        "confusion": cm,
        "num_samples": total,
    }


# ------------------------------------------------------------------------------------------------ the PNG


def confusion_png_size(num_classes: int, cell_size: int = 64) -> tuple[int, int]:
    """The (width, height) of :func:`save_confusion_png`'s image: label margins of 5/2 and 3/2 cells around the grid."""
    left, top, pad = _margins(cell_size)
    return left + num_classes * cell_size + pad, top + num_classes * cell_size + pad


def _margins(cell_size: int) -> tuple[int, int, int]:
    return (5 * cell_size) // 2, (3 * cell_size) // 2, cell_size // 4


def _colour(v: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1), like matplotlib's ``Blues``."""
    lo, hi = np.array([247, 251, 255]), np.array([8, 48, 107])
    return tuple(int(c + 0.5) for c in lo + (hi - lo) * min(max(v, 0.0), 1.0))


def save_confusion_png(
    confusion: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    cell_size: int = 64,
    title: str | None = None,
) -> Path:
    """Draw the confusion matrix (rows: true class, columns: predicted) as a labelled PNG, atomically.

    Cells are coloured by the row-normalised rate (recall per true class) and show the count and the rate.
    """
    cm = np.asarray(confusion.detach().cpu().numpy() if hasattr(confusion, "detach") else confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {cm.shape}")
    k = cm.shape[0]
    if len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} names for a {k}x{k} confusion matrix")
    if isinstance(cell_size, bool) or not isinstance(cell_size, int) or cell_size < 16:
        raise ValueError(f"cell_size must be an int >= 16, got {cell_size!r}")
    path = png_path(path)
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)

    width, height = confusion_png_size(k, cell_size)
    left, top, _ = _margins(cell_size)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    label_font = load_font(max(10, cell_size // 5))
    cell_font = load_font(max(9, cell_size // 5))
    small_font = load_font(max(8, cell_size // 6))

    title = title if title is not None else f"Confusion matrix (n={int(cm.sum())}, acc={_acc(cm):.3f})"
    draw.text((left, 4), fit_text(draw, title, label_font, width - left - 4), fill="black", font=label_font)
    draw.text((4, top - cell_size // 2), "true \\ predicted", fill="gray", font=small_font)
    for i, name in enumerate(class_names):
        y = top + i * cell_size + cell_size // 2
        draw_text(draw, (left - 6, y), fit_text(draw, str(name), label_font, left - 10), label_font, "black", "rm")
        x = left + i * cell_size + cell_size // 2
        draw_text(draw, (x, top - 6), fit_text(draw, str(name), small_font, cell_size - 4), small_font, "black", "mb")
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * cell_size, top + i * cell_size
            fill = _colour(float(rates[i, j]))
            draw.rectangle((x0, y0, x0 + cell_size - 1, y0 + cell_size - 1), fill=fill, outline=(200, 200, 200))
            ink = "white" if rates[i, j] > 0.5 else "black"
            cx, cy = x0 + cell_size // 2, y0 + cell_size // 2
            draw_text(draw, (cx, cy - 1), str(int(cm[i, j])), cell_font, ink, "mb")
            draw_text(draw, (cx, cy + 2), f"{rates[i, j]:.2f}", small_font, ink, "mt")

    return save_png(img, path)


def _acc(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else math.nan
