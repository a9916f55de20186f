"""Loaders (torch and DALI CPU pipelines): box tracking, batch format (uint8), sharding, stage 2, bad files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ferfast.data.augment import FACE_MEAN, FACE_STD, AugmentConfig
from ferfast.data.base import FER7_CLASSES, FaceDataset
from ferfast.data.dali_loader import dali_available, plugin_path
from ferfast.data.loaders import build_loader, make_plan
from ferfast.data.normalize import normalize_images

LOADER_BACKENDS = [
    "torch",
    pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI not installed")),
]
RED, BLUE = (230, 40, 40), (60, 120, 200)
# Image sizes (W, H): square like aligned FER crops, landscape, portrait, tiny.
SIZES = [(100, 100), (120, 90), (64, 80), (48, 48), (150, 100), (90, 130)]


def write_rect_images(root, n, seed=0, grey_every=0, fmt="JPEG"):
    """Images with one filled red rectangle (the "face") on blue; returns files and pixel boxes.

    JPEGs keep full-resolution chroma (4:4:4), so the red edge stays where it was drawn.
    """
    rng = np.random.default_rng(seed)
    files, boxes = [], []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        img = np.empty((h, w, 3), np.uint8)
        img[:] = BLUE
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = int(rng.integers(x0 + w // 4, w + 1)), int(rng.integers(y0 + h // 4, h + 1))
        img[y0:y1, x0:x1] = RED
        name = f"img_{i:03d}." + ("png" if fmt == "PNG" else "jpg")
        pil = Image.fromarray(img)
        if grey_every and i % grey_every == grey_every - 1:
            pil = pil.convert("L")  # red (230,40,40) -> 96, blue -> 113: tracked by the channel test below
        pil.save(root / name, quality=95, subsampling=0) if fmt == "JPEG" else pil.save(root / name)
        files.append(name)
        boxes.append([x0, y0, x1, y1])
    return files, np.array(boxes, np.float32)


def rect_dataset(tmp_path, n=24, **kw):
    files, boxes = write_rect_images(tmp_path, n, **kw)
    return FaceDataset(
        name="rects",
        root=tmp_path,
        split="train",
        class_names=FER7_CLASSES,
        files=files,
        labels=np.arange(n) % 7,
        boxes=boxes,
        box_units="pixel",
    )


def denormalize(images: torch.Tensor) -> np.ndarray:
    """Pixel values (0-255, float) of a batch: uint8 as delivered, or normalised floats (``normalize=True``)."""
    if images.dtype == torch.uint8:
        return images.double().numpy()
    mean = torch.tensor(FACE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(FACE_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255.0).numpy()


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two uint8 batches in normalised units (as the engine sees them)."""
    assert a.dtype == b.dtype == torch.uint8
    return float((normalize_images(a) - normalize_images(b)).abs().mean())


def found_boxes(images: torch.Tensor) -> list[np.ndarray | None]:
    """The red rectangle's pixel box in each output image (None if no pixel is red)."""
    px = denormalize(images)
    out = []
    for img in px:
        mask = (img[0] - img[2]) > 0.0  # red minus blue: +190 inside, -140 outside; the edge crosses 0 half-way
        if not mask.any():
            out.append(None)
            continue
        ys, xs = np.nonzero(mask)
        out.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64))
    return out


def check_tracking(images, boxes, size, min_side=4.0):
    checked = 0
    for found, box in zip(found_boxes(images), boxes.numpy().astype(np.float64) * size):
        bw, bh = box[2] - box[0], box[3] - box[1]
        if bw >= min_side and bh >= min_side:
            assert found is not None, f"tracked box {box} but no rectangle in the image"
            assert np.abs(found - box).max() <= 2.0, f"tracked {box.round(2)} vs found {found}"
            checked += 1
        elif bw <= 0 or bh <= 0:
            assert found is None or (found[2] - found[0]) * (found[3] - found[1]) <= 2 * size
    return checked


@pytest.mark.parametrize("backend", LOADER_BACKENDS)
@pytest.mark.parametrize("stage", ["stage1", "eval"])
def test_boxes_follow_crop_resize_flip(tmp_path, backend, stage):
    ds = rect_dataset(tmp_path, n=24)
    cfg = AugmentConfig(image_size=96)
    loader = build_loader(stage, ds, backend=backend, batch_size=8, config=cfg, num_workers=0, seed=5)
    checked = 0
    for epoch in range(3 if stage == "stage1" else 1):
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch["images"].shape == (8, 3, 96, 96) and batch["images"].dtype == torch.uint8
            checked += check_tracking(batch["images"], batch["boxes"], 96)
    assert checked >= (40 if stage == "stage1" else 24)


@pytest.mark.parametrize("backend", LOADER_BACKENDS)
def test_grey_and_png_images_load_as_rgb(tmp_path, backend):
    ds = rect_dataset(tmp_path, n=8, grey_every=2, fmt="PNG")
    loader = build_loader("eval", ds, backend=backend, batch_size=8, config=AugmentConfig(image_size=64), num_workers=0)
    (batch,) = list(loader)
    px = denormalize(batch["images"])
    grey = px[1::2]
    assert np.abs(grey[:, 0] - grey[:, 1]).max() < 1.0 and np.abs(grey[:, 1] - grey[:, 2]).max() < 1.0
    colour = px[0::2]
    assert np.abs(colour[:, 0] - colour[:, 2]).max() > 100


@pytest.mark.parametrize("backend", LOADER_BACKENDS)
def test_cmyk_and_odd_sized_jpegs_load_as_rgb(tmp_path, backend):
    Image.new("RGB", (37, 23), RED).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.new("RGB", (3, 101), BLUE).save(tmp_path / "thin.jpg", quality=95, subsampling=0)
    ds = FaceDataset(name="odd", root=tmp_path, split="test", class_names=FER7_CLASSES, files=["cmyk.jpg", "thin.jpg"])
    (batch,) = list(
        build_loader("eval", ds, backend=backend, batch_size=2, config=AugmentConfig(image_size=16), num_workers=0)
    )
    px = denormalize(batch["images"]).reshape(2, 3, -1).mean(-1)
    np.testing.assert_allclose(px[0], RED, atol=4)
    np.testing.assert_allclose(px[1], BLUE, atol=4)


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_torch_and_dali_deliver_the_same_batches(tmp_path):
    ds = rect_dataset(tmp_path, n=20)
    kw = dict(batch_size=6, config=AugmentConfig(image_size=64), seed=11)
    a = build_loader("stage1", ds, backend="torch", num_workers=0, **kw)
    b = build_loader("stage1", ds, backend="dali", **kw)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        batches_a, batches_b = list(a), list(b)
        assert len(batches_a) == len(batches_b) == 3
        for x, y in zip(batches_a, batches_b):
            assert torch.equal(x["index"], y["index"])
            assert torch.equal(x["labels"], y["labels"])
            torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-5, rtol=0)
            # Same crop and flip, two bicubic resamplers: the pictures agree up to edge ringing.
            assert gap(x["images"], y["images"]) < 0.05


@pytest.mark.skipif(not dali_available() or plugin_path() is None, reason="DALI or ferfast's DALI plugin missing")
def test_torch_and_dali_strong_views_agree(tmp_path):
    """Stage 2's strong view: same crops, flips and RandAugment ops on both loaders (the plan draws them)."""
    ds = rect_dataset(tmp_path, n=24)
    kw = dict(unlabeled=ds.subset(range(8, 24)), batch_size=8, config=AugmentConfig(image_size=48), seed=9)
    a = list(build_loader("stage2", ds.subset(range(8)), backend="torch", num_workers=0, **kw))
    b = list(build_loader("stage2", ds.subset(range(8)), backend="dali", **kw))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert torch.equal(x["index_unlabeled"], y["index_unlabeled"]) and torch.equal(x["index"], y["index"])
        for key in ("images", "images_weak", "images_strong"):
            assert x[key].dtype == y[key].dtype == torch.uint8, key
            assert gap(x[key], y[key]) < 0.05, key
        assert gap(x["images_strong"], x["images_weak"]) > 0.1  # RandAugment did something


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_dali_without_ferfast_operators_tracks_boxes_and_makes_stage2_views(tmp_path):
    """DALI's own operators (a machine where ferfast's DALI plugin is not built): same batches and boxes."""
    from ferfast.data.dali_loader import DaliFaceLoader

    ds = rect_dataset(tmp_path, n=24)
    cfg = AugmentConfig(image_size=48)
    plan = make_plan("stage2", ds.subset(range(8)), unlabeled=ds.subset(range(8, 24)), batch_size=8, config=cfg, seed=3)
    plain = DaliFaceLoader(plan, use_plugin=False)
    assert not plain.fused
    ref = list(
        build_loader(
            "stage2",
            ds.subset(range(8)),
            unlabeled=ds.subset(range(8, 24)),
            backend="torch",
            batch_size=8,
            config=cfg,
            seed=3,
            num_workers=0,
        )
    )
    got = list(plain)
    assert len(got) == len(ref) == 2
    for x, y in zip(got, ref):
        assert torch.equal(x["index_unlabeled"], y["index_unlabeled"])
        torch.testing.assert_close(x["boxes"], y["boxes"], atol=1e-5, rtol=0)
        assert check_tracking(x["images"], x["boxes"], 48) > 0
        check_tracking(x["images_weak"], x["boxes_weak"], 48)
        assert gap(x["images_weak"], y["images_weak"]) < 0.05  # DALI's cubic vs torchvision's
        assert x["images_strong"].shape == (8, 3, 48, 48) and x["images_strong"].dtype == torch.uint8


@pytest.mark.parametrize("backend", LOADER_BACKENDS)
def test_same_seed_same_batches_new_epoch_new_draws(tmp_path, backend):
    ds = rect_dataset(tmp_path, n=16)
    kw = dict(backend=backend, batch_size=8, config=AugmentConfig(image_size=32), num_workers=0)
    one = build_loader("stage1", ds, seed=3, **kw)
    two = build_loader("stage1", ds, seed=3, **kw)
    b1, b2 = next(iter(one)), next(iter(two))
    assert torch.equal(b1["index"], b2["index"]) and torch.equal(b1["images"], b2["images"])
    one.set_epoch(1)
    b3 = next(iter(one))
    assert not torch.equal(b1["index"], b3["index"])


def test_torch_loader_workers_match_main_process(tmp_path):
    ds = rect_dataset(tmp_path, n=16)
    kw = dict(backend="torch", batch_size=4, config=AugmentConfig(image_size=32), seed=2)
    main = list(build_loader("stage1", ds, num_workers=0, **kw))
    workers = list(build_loader("stage1", ds, num_workers=2, **kw))
    assert len(main) == len(workers) == 4
    for x, y in zip(main, workers):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["images"], y["images"])


def test_sharding_by_rank_is_disjoint_and_complete():
    ds = FaceDataset(name="n", root=".", split="train", class_names=FER7_CLASSES, files=[f"{i}.jpg" for i in range(50)])
    for drop_last, per_rank in [(True, 2), (False, 3)]:
        seen = []
        for rank in range(3):
            plan = make_plan("stage1", ds, batch_size=8, rank=rank, world_size=3, seed=1, drop_last=drop_last)
            assert len(plan) == per_rank
            seen.append(np.concatenate([plan.step_indices(0, s)[0] for s in range(len(plan))]))
        flat = np.concatenate(seen)
        if drop_last:  # 48 of 50 images, each once, no rank shares one
            assert len(flat) == 48 and len(set(flat.tolist())) == 48
        else:  # padded by wrapping: every image at least once, every rank the same steps
            assert set(flat.tolist()) == set(range(50)) and len({len(s) for s in seen}) == 1


def test_eval_plan_keeps_order_and_last_partial_batch():
    ds = FaceDataset(name="n", root=".", split="test", class_names=FER7_CLASSES, files=[f"{i}.jpg" for i in range(10)])
    plan = make_plan("eval", ds, batch_size=4)
    got = [plan.step_indices(0, s)[0].tolist() for s in range(len(plan))]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("backend", LOADER_BACKENDS)
def test_stage2_batches_labeled_view_and_unlabeled_pair(tmp_path, backend):
    ds = rect_dataset(tmp_path, n=30)
    labeled = ds.subset(range(5))  # fewer labeled images than a batch: the labeled set repeats
    unlabeled = ds.subset(range(5, 30))
    loader = build_loader(
        "stage2",
        labeled,
        unlabeled=unlabeled,
        backend=backend,
        batch_size=8,
        config=AugmentConfig(image_size=48),
        num_workers=0,
        seed=4,
    )
    assert len(loader) == 3  # one pass over 25 unlabeled images, 8 at a time, last partial dropped
    batches = list(loader)
    assert len(batches) == 3
    for b in batches:
        assert set(b) >= {
            "images",
            "labels",
            "boxes",
            "index",
            "images_weak",
            "images_strong",
            "boxes_weak",
            "index_unlabeled",
        }
        assert b["images"].shape == b["images_weak"].shape == b["images_strong"].shape == (8, 3, 48, 48)
        assert set(b["index"].tolist()) <= set(range(5))  # labeled stream: indices into `labeled`
        assert torch.equal(b["labels"], torch.from_numpy(labeled.labels[b["index"].numpy()]))
        check_tracking(b["images"], b["boxes"], 48)
        check_tracking(b["images_weak"], b["boxes_weak"], 48)
        assert not torch.equal(b["images_weak"], b["images_strong"])
    unl = torch.cat([b["index_unlabeled"] for b in batches])
    assert len(set(unl.tolist())) == 24


def corrupt_files(root):
    good = (root / "img_000.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    # Intact header and end marker, garbage in between: passes the probe, fails in the decoder.
    (root / "garbage.jpg").write_bytes(
        good[:300] + bytes(np.random.default_rng(0).integers(0, 255, 2000, np.uint8)) + b"\xff\xd9"
    )
    return ["truncated.jpg", "empty.jpg", "text.png", "garbage.jpg", "missing.jpg"]


@pytest.mark.parametrize("backend", LOADER_BACKENDS)
def test_unreadable_images_are_skipped_counted_and_warned(tmp_path, backend):
    files, boxes = write_rect_images(tmp_path, 12)
    bad = corrupt_files(tmp_path)
    all_files = files[:6] + bad + files[6:]
    all_boxes = np.concatenate([boxes[:6], np.full((len(bad), 4), np.nan, np.float32), boxes[6:]])
    ds = FaceDataset(
        name="mixed",
        root=tmp_path,
        split="train",
        class_names=FER7_CLASSES,
        files=all_files,
        labels=np.zeros(len(all_files)),
        boxes=all_boxes,
        box_units="pixel",
    )
    loader = build_loader("eval", ds, backend=backend, batch_size=5, config=AugmentConfig(image_size=32), num_workers=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batches = list(loader)
    assert len(batches) == 4 and [len(b["index"]) for b in batches] == [5, 5, 5, 2]  # nothing lost, sizes kept
    used = torch.cat([b["index"] for b in batches]).tolist()
    assert not {all_files[i] for i in used} & set(bad)  # no bad file delivered
    messages = " ".join(str(x.message) for x in w)
    assert "skipped unreadable image" in messages
    skipped_names = {b for b in bad if b in messages}
    assert {"truncated.jpg", "empty.jpg", "text.png", "missing.jpg"} <= skipped_names
    assert loader.skipped >= 4  # the garbage JPEG is caught by the decoder (torch) or after DALI's error
    assert "garbage.jpg" in messages


def test_bad_arguments_name_themselves(tmp_path):
    ds = rect_dataset(tmp_path, n=4)
    with pytest.raises(ValueError, match="stage"):
        make_plan("stage3", ds)
    with pytest.raises(ValueError, match="unlabeled"):
        make_plan("stage2", ds)
    with pytest.raises(ValueError, match="batch_size"):
        make_plan("stage1", ds, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        make_plan("stage1", ds, rank=2, world_size=2)
    with pytest.raises(ValueError, match="backend"):
        build_loader("stage1", ds, backend="mxnet")
    with pytest.raises(TypeError, match="FaceDataset"):
        make_plan("stage1", [1, 2, 3])
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.5, 0.2))
