"""RandAugment draws made by ferfast, applied by torchvision (torch loader) or ferfast's DALI operator.

:func:`draw_rand_augment` draws, for a batch, torchvision ``transforms.v2.RandAugment``'s ops
(14 ops, uniform with replacement) and their signed parameters at a per-image magnitude
(timm's ``rand-m9-mstd0.5``: ``N(m, std)`` clipped to [0, 10], mapped to torchvision's 31 bins).
:func:`apply_rand_augment_torch` applies one image's draws with torchvision's functional API exactly
as ``RandAugment`` does; the DALI operator ``fn.ferfast_rand_augment(images, ops, magnitudes)``
(``csrc/dali/rand_augment.cc``) applies the same draws to HWC uint8 images and gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .augment import RandAugmentConfig

__all__ = [
    "NUM_MAGNITUDE_BINS",
    "RAND_AUGMENT_OPS",
    "RandAugmentDraws",
    "apply_rand_augment_torch",
    "draw_rand_augment",
    "magnitude_bins",
]

#: torchvision's RandAugment op space, in its order: the op ids of ``RandAugmentDraws.ops``.
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
#: torchvision's default number of magnitude bins; timm's 0-10 magnitude m maps to bin round(m / 10 * 30).
NUM_MAGNITUDE_BINS = 31
_OP_ID = {name: i for i, name in enumerate(RAND_AUGMENT_OPS)}
_SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)
_TRANSLATE_SCALE = 150.0 / 331.0


@dataclass
class RandAugmentDraws:
    """The RandAugment ops of a batch: ``ops`` int32 ``[N, num_ops]`` (indices of :data:`RAND_AUGMENT_OPS`)
    and ``magnitudes`` float32 ``[N, num_ops]``, each op's signed parameter (see :func:`draw_rand_augment`)."""

    ops: np.ndarray
    magnitudes: np.ndarray


@cache
def _static_tables() -> np.ndarray:
    """``[14, 31]`` float32 parameter tables of the size-independent ops (translations filled per image)."""
    n = NUM_MAGNITUDE_BINS
    tab = np.zeros((len(RAND_AUGMENT_OPS), n), dtype=np.float32)
    tab[_OP_ID["ShearX"]] = tab[_OP_ID["ShearY"]] = torch.linspace(0.0, 0.3, n).numpy()
    tab[_OP_ID["Rotate"]] = torch.linspace(0.0, 30.0, n).numpy()
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        tab[_OP_ID[name]] = torch.linspace(0.0, 0.9, n).numpy()
    tab[_OP_ID["Posterize"]] = (8 - (torch.arange(n) / ((n - 1) / 4))).round().int().numpy()
    # F.solarize(threshold=255.0 * magnitude), compared with the uint8 image in float32.
    tab[_OP_ID["Solarize"]] = [255.0 * float(v) for v in torch.linspace(1.0, 0.0, n)]
    return tab


@lru_cache(maxsize=4096)
def _translate_table(extent: int) -> np.ndarray:
    """torchvision's translation in pixels per bin for an image side of ``extent``: ``int(linspace(0, 150/331*e))``."""
    return np.array(
        [int(float(v)) for v in torch.linspace(0.0, _TRANSLATE_SCALE * extent, NUM_MAGNITUDE_BINS)], dtype=np.float32
    )


def magnitude_bins(magnitudes: np.ndarray) -> np.ndarray:
    """timm's 0-10 magnitudes -> torchvision's bin indices ``round(m / 10 * 30)`` (half to even, as Python)."""
    return np.rint(np.asarray(magnitudes, dtype=np.float64) / 10.0 * (NUM_MAGNITUDE_BINS - 1)).astype(np.int64)


def draw_rand_augment(
    rng: np.random.Generator, n: int, config: RandAugmentConfig, sizes: np.ndarray
) -> RandAugmentDraws:
    """Draw the RandAugment ops of ``n`` images of ``sizes`` ``[n, 2]`` (W, H) from ``rng`` (one call per batch).

    Per image: a magnitude ``N(config.magnitude, config.magnitude_std)`` clipped to [0, 10] and
    binned (:func:`magnitude_bins`); ``config.num_ops`` ops uniform with replacement; signed ops
    negated with probability 1/2. ``magnitudes`` holds each op's parameter as torchvision applies
    it: shear factor, translation in whole pixels of that image's W (TranslateX) or H
    (TranslateY), rotation degrees, enhance factor minus 1, posterize bits, solarize threshold
    (0-255); 0 for Identity, AutoContrast and Equalize.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(config, RandAugmentConfig):
        raise TypeError(f"config must be a RandAugmentConfig, got {type(config).__name__}")
    sizes = np.asarray(sizes)
    if sizes.shape != (n, 2) or not np.issubdtype(sizes.dtype, np.integer) or (n and sizes.min() < 1):
        raise ValueError(
            f"sizes must be positive integers of shape [n, 2] = [{n}, 2] (W, H), got {sizes.dtype} {sizes.shape}"
        )
    k = config.num_ops
    mag = np.clip(rng.normal(config.magnitude, config.magnitude_std, n), 0.0, 10.0)
    bins = magnitude_bins(mag)
    ops = rng.integers(0, len(RAND_AUGMENT_OPS), (n, k))
    negate = rng.random((n, k)) <= 0.5
    rows = np.repeat(bins[:, None], k, axis=1)
    mags = _static_tables()[ops, rows]
    for axis, name in ((0, "TranslateX"), (1, "TranslateY")):
        where = np.nonzero(ops == _OP_ID[name])
        for i, j in zip(*where):
            mags[i, j] = _translate_table(int(sizes[i, axis]))[bins[i]]
    signed = np.isin(ops, [_OP_ID[s] for s in _SIGNED])
    mags = np.where(signed & negate, -mags, mags).astype(np.float32)
    return RandAugmentDraws(ops=ops.astype(np.int32), magnitudes=mags)


def _apply_op(img: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """One op as torchvision's ``RandAugment._apply_image_or_video_transform`` calls it (NEAREST, fill None)."""
    nearest = InterpolationMode.NEAREST
    if name == "Identity":
        return img
    if name == "ShearX":
        return F.affine(
            img,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=[math.degrees(math.atan(m)), 0.0],
            interpolation=nearest,
            fill=None,
            center=[0, 0],
        )
    if name == "ShearY":
        return F.affine(
            img,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=[0.0, math.degrees(math.atan(m))],
            interpolation=nearest,
            fill=None,
            center=[0, 0],
        )
    if name == "TranslateX":
        return F.affine(
            img, angle=0.0, translate=[int(m), 0], scale=1.0, interpolation=nearest, shear=[0.0, 0.0], fill=None
        )
    if name == "TranslateY":
        return F.affine(
            img, angle=0.0, translate=[0, int(m)], scale=1.0, interpolation=nearest, shear=[0.0, 0.0], fill=None
        )
    if name == "Rotate":
        return F.rotate(img, angle=m, interpolation=nearest, fill=None)
    if name == "Brightness":
        return F.adjust_brightness(img, brightness_factor=1.0 + m)
    if name == "Color":
        return F.adjust_saturation(img, saturation_factor=1.0 + m)
    if name == "Contrast":
        return F.adjust_contrast(img, contrast_factor=1.0 + m)
    if name == "Sharpness":
        return F.adjust_sharpness(img, sharpness_factor=1.0 + m)
    if name == "Posterize":
        return F.posterize(img, bits=int(m))
    if name == "Solarize":
        return F.solarize(img, threshold=m)
    if name == "AutoContrast":
        return F.autocontrast(img)
    return F.equalize(img)


def apply_rand_augment_torch(img_uint8_chw: torch.Tensor, ops_row: np.ndarray, mags_row: np.ndarray) -> torch.Tensor:
    """Apply one image's drawn ops (a row of :class:`RandAugmentDraws`) to a uint8 ``[3, H, W]`` tensor with
    torchvision's functional API, as ``transforms.v2.RandAugment`` does (the torch loader's strong view)."""
    if not isinstance(img_uint8_chw, torch.Tensor) or img_uint8_chw.dtype != torch.uint8:
        raise TypeError(f"img_uint8_chw must be a uint8 torch.Tensor, got {getattr(img_uint8_chw, 'dtype', None)}")
    if img_uint8_chw.ndim != 3 or img_uint8_chw.shape[0] != 3:
        raise ValueError(f"img_uint8_chw must be [3, H, W] (RGB), got shape {tuple(img_uint8_chw.shape)}")
    ops_row = np.asarray(ops_row).reshape(-1)
    mags_row = np.asarray(mags_row, dtype=np.float32).reshape(-1)
    if not np.issubdtype(ops_row.dtype, np.integer):
        raise TypeError(f"ops_row must hold integer op ids, got {ops_row.dtype}")
    if len(ops_row) != len(mags_row):
        raise ValueError(f"ops_row and mags_row must have the same length, got {len(ops_row)} and {len(mags_row)}")
    if len(ops_row) and (ops_row.min() < 0 or ops_row.max() >= len(RAND_AUGMENT_OPS)):
        raise ValueError(f"ops_row must be op ids in [0, {len(RAND_AUGMENT_OPS)}), got {ops_row.tolist()}")
    out = img_uint8_chw
    for op, m in zip(ops_row.tolist(), mags_row.tolist()):
        out = _apply_op(out, RAND_AUGMENT_OPS[op], float(m))
    return out
