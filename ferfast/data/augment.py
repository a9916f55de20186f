"""Augmentation parameters drawn by ferfast, not by the loader, so face boxes can follow them.

Both loaders (torch and DALI) get their random resized crop windows and flips from here:
:func:`draw_crop_noise` draws the uniforms of torchvision's ``RandomResizedCrop.get_params``
(10 attempts) for a batch from a seeded generator, and :func:`resolve_crop_windows` turns them
into integer pixel windows once each image's size is known. :func:`transform_boxes` moves
relative face boxes through the crop and the flip, so face-IoU Mixup needs no detector.
Defaults are SSFER's (docs/design.md, Recipes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FACE_MEAN",
    "FACE_STD",
    "NUM_CROP_ATTEMPTS",
    "AugmentConfig",
    "CropNoise",
    "RandAugmentConfig",
    "draw_crop_noise",
    "full_windows",
    "resolve_crop_windows",
    "transform_boxes",
]

#: Face normalisation statistics (RGB, [0, 1] scale) used by SSFER's fine-tuning (docs/design.md).
FACE_MEAN: tuple[float, float, float] = (0.588, 0.459, 0.402)
FACE_STD: tuple[float, float, float] = (0.228, 0.202, 0.190)
#: torchvision's RandomResizedCrop tries this many windows before falling back to a central crop.
NUM_CROP_ATTEMPTS = 10


@dataclass(frozen=True)
class RandAugmentConfig:
    """The strong view's RandAugment: timm's ``rand-m9-mstd0.5-inc1`` (SSFER), in timm's terms.

    ``magnitude`` is on timm's 0-10 scale; each image draws its magnitude from
    ``N(magnitude, magnitude_std)`` clipped to [0, 10] where the backend allows it (torch loader);
    the ops' severity increases with the magnitude (``inc1``).
    """

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.num_ops, int) and self.num_ops >= 0):
            raise ValueError(f"RandAugmentConfig.num_ops must be a non-negative int, got {self.num_ops!r}")
        if not 0.0 <= self.magnitude <= 10.0:
            raise ValueError(f"RandAugmentConfig.magnitude must be in [0, 10] (timm's scale), got {self.magnitude}")
        if not self.magnitude_std >= 0.0:
            raise ValueError(f"RandAugmentConfig.magnitude_std must be >= 0, got {self.magnitude_std}")


@dataclass(frozen=True)
class AugmentConfig:
    """Image size, crop, flip and normalisation of every view (SSFER's defaults).

    Training views: ``RandomResizedCrop(image_size, scale, ratio, bicubic)`` + horizontal flip
    with probability ``flip_prob``; the strong view adds ``rand_augment``. Evaluation: the
    whole image resized to ``image_size`` (bicubic). Then ``(x / 255 - mean) / std``.
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = FACE_MEAN
    std: tuple[float, float, float] = FACE_STD
    rand_augment: RandAugmentConfig = RandAugmentConfig()

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and self.image_size > 0):
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std must be 3 values (RGB) with std > 0, got {self.mean}, {self.std}")


@dataclass
class CropNoise:
    """The uniforms of a batch's crops and flips, independent of the images' sizes.

    ``attempts``: ``[N, 10, 4]`` (area fraction, log aspect ratio, top, left) in [0, 1);
    ``flip``: ``[N]`` bool.
    """

    attempts: np.ndarray
    flip: np.ndarray


def draw_crop_noise(rng: np.random.Generator, n: int, flip_prob: float = 0.5) -> CropNoise:
    """Draw the crop and flip uniforms of ``n`` images from ``rng`` (one call per batch)."""
    attempts = rng.random((n, NUM_CROP_ATTEMPTS, 4))
    flip = rng.random(n) < flip_prob
    return CropNoise(attempts=attempts, flip=flip)


def resolve_crop_windows(
    noise: CropNoise,
    sizes: np.ndarray,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> np.ndarray:
    """Integer crop windows ``[N, 4]`` = (left, top, width, height) for images of ``sizes`` ``[N, 2]`` (W, H).

    torchvision's ``RandomResizedCrop.get_params``, vectorised: up to 10 attempts of
    area ``U(scale) * W * H`` and aspect ratio ``exp(U(log ratio))``; the first that fits is
    placed uniformly; when none fits, the largest central crop with the aspect ratio clamped to
    ``ratio``.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    w_img = sizes[:, 0:1].astype(np.float64)
    h_img = sizes[:, 1:2].astype(np.float64)
    u = noise.attempts
    area = w_img * h_img
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = np.rint(np.sqrt(target_area * aspect))  # torchvision rounds with Python's round (half to even), as rint
    h = np.rint(np.sqrt(target_area / aspect))
    ok = (w > 0) & (h > 0) & (w <= w_img) & (h <= h_img)
    first = np.argmax(ok, axis=1)
    rows = np.arange(len(sizes))
    found = ok[rows, first]
    w_sel = w[rows, first]
    h_sel = h[rows, first]
    top = np.floor(u[rows, first, 2] * (h_img[:, 0] - h_sel + 1))
    left = np.floor(u[rows, first, 3] * (w_img[:, 0] - w_sel + 1))

    # Fallback: central crop (torchvision's code path after the attempts).
    in_ratio = w_img[:, 0] / h_img[:, 0]
    fw = np.where(in_ratio > ratio[1], np.rint(h_img[:, 0] * ratio[1]), w_img[:, 0])
    fh = np.where(in_ratio < ratio[0], np.rint(w_img[:, 0] / ratio[0]), h_img[:, 0])
    fw = np.minimum(fw, w_img[:, 0])
    fh = np.minimum(fh, h_img[:, 0])
    ftop = (h_img[:, 0] - fh) // 2
    fleft = (w_img[:, 0] - fw) // 2
    out = np.stack([np.where(found, a, b) for a, b in ((left, fleft), (top, ftop), (w_sel, fw), (h_sel, fh))], axis=1)
    return out.astype(np.int64)


def full_windows(sizes: np.ndarray) -> np.ndarray:
    """The whole image as a window ``[N, 4]`` (left, top, width, height): the evaluation view."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    return np.concatenate([np.zeros_like(sizes), sizes], axis=1)


def transform_boxes(boxes: np.ndarray, sizes: np.ndarray, windows: np.ndarray, flip: np.ndarray | None) -> np.ndarray:
    """Relative xyxy boxes of the source images -> relative boxes of the cropped, resized, flipped views.

    A box is clipped to the crop window (a face cut off by the crop keeps its visible part;
    a face outside the window becomes an empty box, IoU 0).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    win = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    px = boxes * np.concatenate([sizes, sizes], axis=1)
    x = (px[:, 0::2] - win[:, 0:1]) / win[:, 2:3]
    y = (px[:, 1::2] - win[:, 1:2]) / win[:, 3:4]
    x = np.clip(x, 0.0, 1.0)
    y = np.clip(y, 0.0, 1.0)
    if flip is not None:
        f = np.asarray(flip, dtype=bool)
        x = np.where(f[:, None], 1.0 - x[:, ::-1], x)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)
