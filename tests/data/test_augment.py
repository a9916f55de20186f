"""Crop windows (torchvision's RandomResizedCrop, vectorised) and box transforms."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ferfast.data.augment import NUM_CROP_ATTEMPTS, CropNoise, draw_crop_noise, resolve_crop_windows, transform_boxes


def torchvision_windows(noise: CropNoise, w: int, h: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's own RandomResizedCrop.get_params, with its torch draws replaced by our uniforms.

    Attempt k's area and log-ratio draws use slots 0 and 1, its top and left draws slots 2 and 3.
    """
    return np.array([_torchvision_window(att, w, h, scale, ratio) for att in noise.attempts])


def _torchvision_window(att: np.ndarray, w: int, h: int, scale, ratio) -> tuple[int, int, int, int]:
    state = {"attempt": 0, "calls": 0}

    class Uniform:
        def __init__(self, *_):
            pass

        def uniform_(self, lo, hi):
            slot = state["calls"] % 2
            u = att[state["attempt"], slot]
            state["calls"] += 1
            if slot == 1:
                state["attempt"] += 1
            return torch.tensor([float(lo) + (float(hi) - float(lo)) * u], dtype=torch.float64)

    picks = iter([2, 3])

    def randint(lo, hi, size):
        u = att[state["attempt"] - 1, next(picks)]
        return torch.tensor([lo + math.floor(u * (hi - lo))])

    orig = torch.empty, torch.randint
    torch.empty, torch.randint = Uniform, randint
    try:
        top, left, hh, ww = v2.RandomResizedCrop.get_params(torch.zeros(1, h, w), list(scale), list(ratio))
    finally:
        torch.empty, torch.randint = orig
    return left, top, ww, hh


def test_windows_inside_image_and_within_scale_and_ratio():
    rng = np.random.default_rng(0)
    sizes = np.array([(100, 100), (120, 90), (48, 48), (640, 480), (7, 5)] * 200)
    noise = draw_crop_noise(rng, len(sizes))
    win = resolve_crop_windows(noise, sizes)
    left, top, w, h = win.T
    assert (left >= 0).all() and (top >= 0).all() and (w > 0).all() and (h > 0).all()
    assert (left + w <= sizes[:, 0]).all() and (top + h <= sizes[:, 1]).all()
    big = sizes[:, 0] >= 48  # rounding dominates on a 7x5 image
    area = (w * h / (sizes[:, 0] * sizes[:, 1]))[big]
    assert area.min() > 0.17 and area.max() <= 1.0
    aspect = (w / h)[big]
    assert aspect.min() > 0.7 and aspect.max() < 1.43


def test_fallback_is_torchvisions_central_crop():
    # A 300x20 strip: no 10 attempts can fit an area of >= 20% with aspect <= 4/3 -> central crop.
    noise = draw_crop_noise(np.random.default_rng(1), 4)
    win = resolve_crop_windows(noise, np.array([[300, 20]] * 4))
    assert (win == np.array([[136, 0, 27, 20]])).all()  # w = round(20 * 4/3) = 27, left = (300-27)//2
    win = resolve_crop_windows(noise, np.array([[20, 300]] * 4))
    assert (win == np.array([[0, 136, 20, 27]])).all()  # h = round(20 / (3/4)) = 27


def test_matches_torchvision_get_params_given_the_same_uniforms():
    sizes = [(100, 100), (120, 90), (64, 80)]
    noise = draw_crop_noise(np.random.default_rng(2), 60)
    for w, h in sizes:
        ours = resolve_crop_windows(noise, np.array([[w, h]] * 60))
        theirs = torchvision_windows(noise, w, h)
        assert (ours == theirs).all()
    assert noise.attempts.shape == (60, NUM_CROP_ATTEMPTS, 4)


def test_transform_boxes_matches_torchvision_v2_on_bounding_boxes():
    rng = np.random.default_rng(3)
    n = 50
    sizes = np.stack([rng.integers(40, 200, n), rng.integers(40, 200, n)], 1)
    x0, y0 = rng.random(n) * 0.6, rng.random(n) * 0.6
    boxes = np.stack([x0, y0, x0 + rng.random(n) * 0.4, y0 + rng.random(n) * 0.4], 1)
    noise = draw_crop_noise(rng, n)
    win = resolve_crop_windows(noise, sizes)
    ours = transform_boxes(boxes, sizes, win, noise.flip)
    for i in range(n):
        (w, h), (left, top, cw, ch) = sizes[i], win[i]
        bb = tv_tensors.BoundingBoxes(torch.tensor(boxes[i] * [w, h, w, h])[None], format="XYXY", canvas_size=(h, w))
        bb = F.resized_crop(bb, int(top), int(left), int(ch), int(cw), [224, 224])
        if noise.flip[i]:
            bb = F.horizontal_flip(bb)
        ref = (bb.as_subclass(torch.Tensor)[0].numpy() / 224).clip(0, 1)
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)


def test_transform_boxes_flip_and_clip_by_hand():
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 0.1, 0.1]])
    sizes = np.array([[100, 100], [100, 100]])
    win = np.array([[0, 0, 100, 100], [50, 50, 50, 50]])  # whole image; a window that misses box 2
    out = transform_boxes(boxes, sizes, win, np.array([True, False]))
    np.testing.assert_allclose(out[0], [0.5, 0.2, 0.9, 0.6], atol=1e-6)
    assert out[1][2] - out[1][0] == 0 and out[1][3] - out[1][1] == 0  # empty: IoU 0 downstream
