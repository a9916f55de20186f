"""Synthetic faces: determinism, exact face boxes, RAF-DB's layout on disk, caching, learnable expressions, errors."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferfast.data.base import BOX_SIDECAR, FER7_CLASSES, load_box_sidecar
from ferfast.data.synthetic import (
    EXPRESSION_PARAMS,
    EXPRESSION_PROTOTYPES,
    SyntheticFaceConfig,
    make_identities,
    render_faces,
    write_synthetic_dataset,
)

# RAF-DB basic's label codes (1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral)
RAFDB_CODE = {"surprise": 1, "fear": 2, "disgust": 3, "happiness": 4, "sadness": 5, "anger": 6, "neutral": 7}

SMALL = dict(num_train=70, num_test=35, num_unlabeled=30, num_identities=10, num_unlabeled_identities=3)


def _render(seed: int, n: int = 21, config: SyntheticFaceConfig | None = None, **kw):
    config = config or SyntheticFaceConfig(size=64)
    ids = np.arange(n) % 5
    expr = np.arange(n) % 7
    return render_faces(n, identities=ids, expressions=expr, config=config, rng=np.random.default_rng(seed), **kw)


def _read_meta(root: Path) -> list[dict[str, str]]:
    with open(root / "synthetic_faces.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_faces_different_seed_different():
    images, boxes = _render(0)
    assert images.shape == (21, 64, 64, 3) and images.dtype == np.uint8
    assert boxes.shape == (21, 4) and boxes.dtype == np.float32
    again_images, again_boxes = _render(0)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(boxes, again_boxes)
    other_images, other_boxes = _render(1)
    assert np.abs(images.astype(int) - other_images.astype(int)).mean() > 5
    assert not np.array_equal(boxes, other_boxes)
    # the config's seed draws the identity table: same per-image draws, other people
    other_people, _ = _render(0, config=SyntheticFaceConfig(size=64, seed=7))
    assert np.abs(images.astype(int) - other_people.astype(int)).mean() > 5


def test_identity_table_is_prefix_stable_and_identities_keep_their_features():
    small = make_identities(5, np.random.default_rng(3))
    large = make_identities(50, np.random.default_rng(3))
    for name, value in vars(small).items():
        np.testing.assert_array_equal(value, getattr(large, name)[:5], err_msg=name)
    assert len(large) == 50 and len(np.unique(large.face_width)) == 50
    # rendering with either table gives the same images for identities 0-4
    a, _ = _render(2, table=small)
    b, _ = _render(2, table=large)
    np.testing.assert_array_equal(a, b)


def test_images_vary_with_expression_and_prototypes_are_documented():
    assert EXPRESSION_PROTOTYPES.shape == (len(FER7_CLASSES), len(EXPRESSION_PARAMS))
    assert np.all(EXPRESSION_PROTOTYPES[FER7_CLASSES.index("neutral")] == 0)
    config = SyntheticFaceConfig(size=64, background=0, noise=0, expression_noise=0, intensity_jitter=0)
    # same person, same pose draw: only the expression differs
    faces = [
        render_faces(1, identities=3, expressions=e, config=config, rng=np.random.default_rng(5))[0][0]
        for e in range(len(FER7_CLASSES))
    ]
    neutral = faces[0].astype(int)
    for e in range(1, len(FER7_CLASSES)):
        assert np.abs(faces[e].astype(int) - neutral).max() > 60, FER7_CLASSES[e]
    at_zero = SyntheticFaceConfig(size=64, background=0, noise=0, expression_noise=0, intensity=0.0)
    happy0 = render_faces(1, identities=3, expressions=1, config=at_zero, rng=np.random.default_rng(5))[0]
    neutral0 = render_faces(1, identities=3, expressions=0, config=at_zero, rng=np.random.default_rng(5))[0]
    np.testing.assert_array_equal(happy0, neutral0)  # intensity 0: every class looks neutral


@pytest.mark.parametrize("size", [64, 100])
def test_boxes_match_the_face_pixels(size):
    """On a flat green background with the hair removed, the non-background pixels are the face outline."""
    config = SyntheticFaceConfig(
        size=size, background=0, background_color=(0, 255, 0), noise=0, max_rotation=15, max_yaw=15, seed=4
    )
    table = make_identities(12, np.random.default_rng(config.seed))
    table.hair_style[:] = 0  # no hair over the forehead or beside the face
    n = 36
    images, boxes = render_faces(
        n,
        identities=np.arange(n) % 12,
        expressions=np.arange(n) % 7,
        config=config,
        rng=np.random.default_rng(0),
        table=table,
    )
    for img, box in zip(images.astype(int), boxes):
        corner = img[0, 0]
        assert corner[1] > 150 and corner[0] < 100  # the background (after global lighting) is still green
        fg = np.abs(img - corner).max(-1) > 60
        rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        found = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)
        np.testing.assert_allclose(found, box * size, atol=1.5)
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def test_aligned_faces_fill_the_image_and_jitter_is_a_knob():
    n = 60
    _, boxes = _render(0, n=n, config=SyntheticFaceConfig(size=64))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    assert np.all(sizes[:, 1] > 0.7) and np.all(sizes[:, 0] > 0.5)  # the face fills most of the crop
    assert np.abs(centres[:, 0] - 0.5).max() < 0.06
    _, loose = _render(0, n=n, config=SyntheticFaceConfig(size=64, align_jitter=0.2))
    loose_centres = (loose[:, :2] + loose[:, 2:]) / 2
    assert np.abs(loose_centres[:, 0] - 0.5).max() > 0.1
    assert np.abs(loose_centres[:, 0] - 0.5).std() > 2 * np.abs(centres[:, 0] - 0.5).std()


def _grey_features(images: np.ndarray, factor: int = 4) -> np.ndarray:
    g = images.astype(np.float64).mean(-1)
    n, h, w = g.shape
    return g.reshape(n, h // factor, factor, w // factor, factor).mean((2, 4)).reshape(n, -1)


def _linear_probe_accuracy(intensity: float) -> float:
    """Ridge least-squares classifier on 16x16 grey pixels: 700 train faces, 300 test faces of unseen people."""
    config = SyntheticFaceConfig(size=64, intensity=intensity, seed=0)
    rng = np.random.default_rng(0)
    n_train, n_test = 700, 300
    y_train, y_test = np.arange(n_train) % 7, np.arange(n_test) % 7
    x_train, _ = render_faces(
        n_train, identities=rng.integers(0, 100, n_train), expressions=y_train, config=config, rng=rng
    )
    x_test, _ = render_faces(
        n_test, identities=rng.integers(100, 160, n_test), expressions=y_test, config=config, rng=rng
    )
    a, b = _grey_features(x_train), _grey_features(x_test)
    mean, std = a.mean(0), a.std(0) + 1e-3
    a = np.hstack([(a - mean) / std, np.ones((len(a), 1))])
    b = np.hstack([(b - mean) / std, np.ones((len(b), 1))])
    w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ np.eye(7)[y_train])
    return float(((b @ w).argmax(1) == y_test).mean())


def test_expressions_are_learnable_but_not_trivial_and_intensity_matters():
    strong = _linear_probe_accuracy(1.0)
    weak = _linear_probe_accuracy(0.25)
    chance = 1 / 7
    assert 0.28 < strong < 0.85, strong  # measured 0.39 at seed 0: well above chance, far from perfect
    assert weak < strong - 0.1, (weak, strong)  # measured 0.20
    assert weak < 0.3 and weak > chance - 0.07


# ---------------------------------------------------------------------------------------------
# the dataset on disk
# ---------------------------------------------------------------------------------------------
def test_writes_rafdb_layout_with_boxes_and_unlabeled_pool(tmp_path):
    root = tmp_path / "synth"
    calls: list[tuple[int, int]] = []
    config = SyntheticFaceConfig(size=64, seed=3)
    out = write_synthetic_dataset(root, config=config, workers=1, progress=lambda d, t: calls.append((d, t)), **SMALL)
    assert out == root
    total = SMALL["num_train"] + SMALL["num_test"] + SMALL["num_unlabeled"]
    assert calls[-1] == (total, total) and [d for d, _ in calls] == sorted(d for d, _ in calls)

    # the label file: RAF-DB's names (5-digit train, 4-digit test) and codes 1-7
    lines = (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == SMALL["num_train"] + SMALL["num_test"]
    parsed = [line.split() for line in lines]
    assert all(len(p) == 2 for p in parsed)
    names = [p[0] for p in parsed]
    codes = [int(p[1]) for p in parsed]
    assert set(codes) <= set(range(1, 8)) and len(set(codes)) == 7
    train_names = [n for n in names if n.startswith("train_")]
    test_names = [n for n in names if n.startswith("test_")]
    assert train_names == [f"train_{i:05d}.jpg" for i in range(1, SMALL["num_train"] + 1)]
    assert test_names == [f"test_{i:04d}.jpg" for i in range(1, SMALL["num_test"] + 1)]
    assert all(re.fullmatch(r"train_\d{5}\.jpg|test_\d{4}\.jpg", n) for n in names)

    # every listed image exists and decodes to size x size RGB
    image_files = [f"Image/aligned/{Path(n).stem}_aligned.jpg" for n in names]
    for f in image_files:
        with Image.open(root / f) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
            im.load()

    # labels map canonical classes to RAF-DB's codes; classes are balanced (uniform)
    meta = _read_meta(root)
    by_file = {row["file"]: row for row in meta}
    for f, code in zip(image_files, codes):
        assert RAFDB_CODE[by_file[f]["expression"]] == code
    train_counts = np.bincount([codes[i] for i, n in enumerate(names) if n.startswith("train_")], minlength=8)[1:]
    assert train_counts.max() - train_counts.min() <= 1

    # people: test identities disjoint from train, pool identities disjoint from both
    ids = {split: {int(r["identity"]) for r in meta if r["split"] == split} for split in ("train", "test", "unlabeled")}
    assert ids["train"] and ids["test"] and not ids["train"] & ids["test"]
    assert not ids["unlabeled"] & (ids["train"] | ids["test"])
    assert len(ids["train"] | ids["test"]) == SMALL["num_identities"]

    # the unlabeled pool: unlabeled/<identity:05d>/<k:04d>.jpg
    pool = sorted(p.relative_to(root / "unlabeled").as_posix() for p in (root / "unlabeled").rglob("*.jpg"))
    assert len(pool) == SMALL["num_unlabeled"]
    assert all(re.fullmatch(r"\d{5}/\d{4}\.jpg", f) for f in pool)
    folders = {f.split("/")[0] for f in pool}
    assert len(folders) == SMALL["num_unlabeled_identities"] and {int(f) for f in folders} == ids["unlabeled"]
    for f in pool[:5]:
        with Image.open(root / "unlabeled" / f) as im:
            assert im.size == (64, 64) and im.mode == "RGB"

    # box sidecars: one row per image, files relative to their root, boxes inside the image
    boxes = load_box_sidecar(root / BOX_SIDECAR)
    assert sorted(boxes) == sorted(image_files)
    pool_boxes = load_box_sidecar(root / "unlabeled" / BOX_SIDECAR)
    assert sorted(pool_boxes) == pool
    for b in [*boxes.values(), *pool_boxes.values()]:
        assert np.isfinite(b).all() and 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1

    record = json.loads((root / "synthetic.json").read_text())
    assert record["format"].startswith("ferfast.synthetic_faces/")
    assert record["seed"] == 3 and record["request"]["config"]["size"] == 64
    assert record["counts"] == {"train": 70, "test": 35, "unlabeled": 30}
    assert record["class_names"] == list(FER7_CLASSES)
    assert not (root / ".synthetic.partial").exists()


def test_reuses_a_matching_copy_and_regenerates_otherwise(tmp_path):
    root = tmp_path / "synth"
    config = SyntheticFaceConfig(size=32, seed=1)
    write_synthetic_dataset(root, config=config, workers=1, **SMALL)
    before = _mtimes(root)
    calls: list[int] = []
    write_synthetic_dataset(
        root, config=SyntheticFaceConfig(size=32, seed=1), workers=1, progress=calls.append, **SMALL
    )
    assert _mtimes(root) == before and calls == []  # reused: nothing written

    # different arguments: regenerated, and stale files of the old request are gone
    write_synthetic_dataset(root, config=config, workers=1, **{**SMALL, "num_unlabeled": 12})
    assert len(list((root / "unlabeled").rglob("*.jpg"))) == 12
    assert json.loads((root / "synthetic.json").read_text())["request"]["num_unlabeled"] == 12
    # a different config: regenerated with other pixels
    first = (root / "Image/aligned/train_00001_aligned.jpg").read_bytes()
    write_synthetic_dataset(root, config=SyntheticFaceConfig(size=32, seed=2), workers=1, **SMALL)
    assert (root / "Image/aligned/train_00001_aligned.jpg").read_bytes() != first

    # a missing file or a run killed before synthetic.json: regenerated
    (root / "Image/aligned/test_0003_aligned.jpg").unlink()
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    write_synthetic_dataset(root, config=SyntheticFaceConfig(size=32, seed=2), workers=1, **SMALL)
    assert (root / "Image/aligned/test_0003_aligned.jpg").is_file()
    assert (root / "synthetic.json").stat().st_mtime_ns != stamp
    (root / "synthetic.json").unlink()
    (root / ".synthetic.partial").write_text("{}")
    write_synthetic_dataset(root, config=SyntheticFaceConfig(size=32, seed=2), workers=1, **SMALL)
    assert (root / "synthetic.json").is_file() and not (root / ".synthetic.partial").exists()


def test_output_does_not_depend_on_workers(tmp_path):
    kw = dict(num_train=20, num_test=10, num_unlabeled=10, num_identities=6, num_unlabeled_identities=2)
    config = SyntheticFaceConfig(size=32, seed=5)
    one = write_synthetic_dataset(tmp_path / "one", config=config, workers=1, **kw)
    two = write_synthetic_dataset(tmp_path / "two", config=config, workers=2, **kw)
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f


def test_rafdb_like_class_balance_option(tmp_path):
    root = write_synthetic_dataset(
        tmp_path / "imb",
        num_train=700,
        num_test=7,
        num_unlabeled=0,
        num_identities=4,
        class_balance="rafdb",
        config=SyntheticFaceConfig(size=16),
        workers=1,
    )
    counts = {c: 0 for c in FER7_CLASSES}
    for row in _read_meta(root):
        if row["split"] == "train":
            counts[row["expression"]] += 1
    assert counts["happiness"] > 2 * counts["fear"] > 0  # RAF-DB's most and least frequent classes
    assert not (root / "unlabeled" / BOX_SIDECAR).exists()


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_dataset(tmp_path, config=SyntheticFaceConfig(size=16), workers=1, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("size", 0, ValueError),
        ("size", 64.0, TypeError),
        ("size", True, TypeError),
        ("intensity", -0.5, ValueError),
        ("intensity", math.nan, ValueError),
        ("intensity", "1", TypeError),
        ("intensity_jitter", 1.5, ValueError),
        ("expression_noise", -1.0, ValueError),
        ("align_jitter", 0.5, ValueError),
        ("max_rotation", 90, ValueError),
        ("max_yaw", -1, ValueError),
        ("scale_jitter", 0.9, ValueError),
        ("lighting", 3.0, ValueError),
        ("background", 1.5, ValueError),
        ("background_color", (0, 255), ValueError),
        ("background_color", (0, 255, 300), ValueError),
        ("noise", -0.1, ValueError),
        ("jpeg_quality", 0, ValueError),
        ("jpeg_quality", 101, ValueError),
        ("seed", -1, ValueError),
    ],
)
def test_bad_config_values_name_the_field(field, value, error):
    with pytest.raises(error, match=rf"SyntheticFaceConfig\.{field}"):
        SyntheticFaceConfig(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(expressions=7), ValueError, "expressions"),
        (dict(expressions=np.array([0.5, 1.0])), TypeError, "expressions"),
        (dict(identities=np.array([0, 1, 2])), ValueError, "identities"),
        (dict(identities=-1), ValueError, "identities"),
        (dict(rng=0), TypeError, "rng"),
        (dict(config={"size": 64}), TypeError, "config"),
    ],
)
def test_bad_render_arguments(kwargs, error, match):
    args = dict(identities=0, expressions=0, config=SyntheticFaceConfig(size=16), rng=np.random.default_rng(0))
    with pytest.raises(error, match=match):
        render_faces(2, **{**args, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(num_train=0), ValueError, "num_train"),
        (dict(num_test=-1), ValueError, "num_test"),
        (dict(num_identities=1), ValueError, "num_identities"),
        (dict(class_balance="zipf"), ValueError, "class_balance"),
        (dict(workers=0), ValueError, "workers"),
        (dict(config=SyntheticFaceConfig(size=16).to_dict()), TypeError, "config"),
        (dict(progress="bar"), TypeError, "progress"),
    ],
)
def test_bad_dataset_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        write_synthetic_dataset(tmp_path / "x", **{**SMALL, "config": SyntheticFaceConfig(size=16), **kwargs})
    assert not (tmp_path / "x").exists()
