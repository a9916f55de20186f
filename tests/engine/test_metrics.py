"""Evaluation metrics against hand-computed cases and a written-out macro-F1, and the confusion-matrix PNG."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ferfast.engine import classification_metrics, confusion_matrix
from ferfast.engine.metrics import confusion_png_size, save_confusion_png

CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


def test_small_case_by_hand():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0, 2]
    m = classification_metrics(y_true, y_pred, 3)
    assert m["confusion"].tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert m["confusion"].dtype == np.int64
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # F1 = 2tp / (2tp + fp + fn): class 0: 2/(2+1+1), class 1: 4/(4+1+1), class 2: 1
    assert m["per_class_f1"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["support"] == [2, 3, 1] and m["num_samples"] == 6


def test_absent_classes():
    # 5 classes: class 2 is only predicted (F1 0, in the average), classes 3 and 4 occur nowhere (left out)
    y_true = [0, 0, 1, 1]
    y_pred = [0, 2, 1, 1]
    m = classification_metrics(y_true, y_pred, 5)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["per_class_accuracy"][:2] == pytest.approx([0.5, 1.0])
    assert all(math.isnan(v) for v in m["per_class_accuracy"][2:])
    assert m["mean_class_accuracy"] == pytest.approx(0.75)  # over the classes present in y_true
    assert m["per_class_f1"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0, 0.0])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def reference_macro_f1(y_true, y_pred):
    """sklearn's f1_score(average="macro", zero_division=0), written out with precision and recall."""
    scores = []
    for c in sorted(set(y_true) | set(y_pred)):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_written_out_formula(seed):
    rng = np.random.default_rng(seed)
    k = 7
    y_true = rng.integers(0, k - 1, size=60)  # class 6 never true
    y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(0, k, size=60))
    m = classification_metrics(torch.from_numpy(y_true), torch.from_numpy(y_pred), k)
    assert m["macro_f1"] == pytest.approx(reference_macro_f1(y_true.tolist(), y_pred.tolist()))
    assert m["accuracy"] == pytest.approx(float(np.mean(y_true == y_pred)))
    recalls = [np.mean(y_pred[y_true == c] == c) for c in range(k) if (y_true == c).any()]
    assert m["mean_class_accuracy"] == pytest.approx(float(np.mean(recalls)))
    assert m["confusion"].sum() == 60 and np.trace(m["confusion"]) == int((y_true == y_pred).sum())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="y_pred"):
        confusion_matrix([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(TypeError, match="y_true"):
        confusion_matrix([0.5, 1.0], [0, 1], 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix([0], [0], 0)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [], 3)


def test_confusion_png(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, size=200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 7, size=200))
    y_pred[y_true == 2] = 2  # class 2 always right: its diagonal cell is the darkest
    cm = classification_metrics(y_true, y_pred, 7)["confusion"]
    cm[0, 6] = 0
    path = save_confusion_png(cm, CLASSES, tmp_path / "eval" / "confusion.png")
    assert path == tmp_path / "eval" / "confusion.png"
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.png"]  # no temp file left
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == confusion_png_size(7) == (160 + 7 * 64 + 16, 96 + 7 * 64 + 16)
        px = img.load()
        left, top, cell = 160, 96, 64

        def corner(i, j):  # a pixel inside cell (i, j), away from its text
            return px[left + j * cell + 4, top + i * cell + 4]

        dark, empty = corner(2, 2), corner(0, 6)
        assert sum(dark) < 200  # full recall: the darkest blue
        assert min(empty) > 240  # no samples: white
        assert sum(corner(0, 0)) < sum(corner(0, 1))  # the diagonal is darker than the errors
        # labels and numbers are drawn: the label margin and the cells hold dark text pixels
        label_strip = img.crop((0, top, left, top + 7 * cell)).convert("L")
        assert np.asarray(label_strip).min() < 100
    small = save_confusion_png(cm, CLASSES, tmp_path / "small.png", cell_size=32, title="RAF-DB test")
    with Image.open(small) as img:
        assert img.size == confusion_png_size(7, 32) == (80 + 7 * 32 + 8, 48 + 7 * 32 + 8)


def test_confusion_png_bad_input(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        save_confusion_png(np.eye(3, dtype=int), ["a", "b"], tmp_path / "c.png")
    with pytest.raises(ValueError, match="square"):
        save_confusion_png(np.ones((2, 3), dtype=int), ["a", "b"], tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"c\.jpg"):
        save_confusion_png(np.eye(2, dtype=int), ["a", "b"], tmp_path / "c.jpg")
    assert list(tmp_path.iterdir()) == []
