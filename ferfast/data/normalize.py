"""Normalisation of uint8 batches where they are used: on the training device, after the copy.

The loaders deliver uint8 ``[B, 3, S, S]`` images (a quarter of fp32's bytes to pin and copy); the engine
calls :func:`normalize_images` once the batch is on its device, so ``(x / 255 - mean) / std`` runs there,
in one elementwise pass, instead of in the loader's workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ferfast.data.augment import FACE_MEAN, FACE_STD

__all__ = ["is_image_key", "normalize_batch", "normalize_images"]


def is_image_key(key: str) -> bool:
    """True for the batch entries that hold images: ``images``, ``images_weak``, ``images_strong``, ..."""
    return key == "images" or key.startswith("images_")


def normalize_batch(
    batch: Mapping[str, Any], mean: Sequence[float] = FACE_MEAN, std: Sequence[float] = FACE_STD
) -> dict[str, Any]:
    """``batch`` with every image entry (:func:`is_image_key`) passed through :func:`normalize_images` (fp32);
    the other entries as they are. The loaders' ``normalize=True`` and the engine's prefetcher both use it."""
    return {
        k: normalize_images(v, mean, std) if is_image_key(k) and isinstance(v, Tensor) else v for k, v in batch.items()
    }


def normalize_images(
    images: Tensor,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(images / 255 - mean) / std`` as ``dtype`` for uint8 ``[B, 3, H, W]`` images (math in fp32, on their device).

    Floating-point images are taken as already normalised and only cast to ``dtype``; ``mean`` and ``std`` are
    per channel on the [0, 1] scale (the face statistics by default).
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.is_floating_point():
        return images.to(dtype)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (or already normalised floats), got {images.dtype}")
    if images.dim() != 4 or images.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"images must be [B, {len(mean)}, H, W] to match mean/std of {len(mean)} channels, "
            f"got {tuple(images.shape)}"
        )
    scale, shift = _affine(tuple(float(m) for m in mean), tuple(float(s) for s in std), images.device)
    return torch.addcmul(-shift, images.float(), scale).to(dtype)


_AFFINE: dict[tuple, tuple[Tensor, Tensor]] = {}


def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """``1 / (255 std)`` and ``mean / std`` as ``[1, C, 1, 1]`` fp32 on ``device``, made once per device.

    Cached so that a training step does not copy them from pageable memory each time (a copy the host would
    wait for on CUDA).
    """
    key = (mean, std, device)
    if key not in _AFFINE:
        shape = (1, len(mean), 1, 1)
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(shape)
        shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32).view(shape)
        _AFFINE[key] = (scale.to(device), shift.to(device))
    return _AFFINE[key]
