"""Mixup of images and labels with an explicit partner: ``face_mixup`` and ``mixup_soft_targets``.

Randomness stays with the caller (``lam`` and ``perm`` are inputs), so every backend gives
the same result. ``face_mixup`` writes out of place, which keeps loader-owned buffers (DALI's)
intact, and can write the originals and the mixed images into one ``[2B, ...]`` batch so
that a single forward pass serves SSFER's real and virtual images.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch
from ferfast.reference.dtypes import acc_dtype
from ferfast.reference.mixup import flip_perm

__all__ = ["face_mixup", "mixup_soft_targets"]


def _check_lam(lam: object, batch: int, ref: Tensor, dtype: torch.dtype) -> Tensor:
    """``lam`` as a 0-d or ``[B]`` tensor of ``dtype`` on ``ref``'s device (no host sync for numbers)."""
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        _checks.unit_interval(lam, "lam")
        return torch.full((), float(lam), dtype=dtype, device=ref.device)
    lam = _checks.tensor(lam, "lam")
    _checks.floating(lam, "lam")
    if not (lam.dim() == 0 or (lam.dim() == 1 and lam.shape[0] == batch)):
        raise ValueError(f"lam must be a number, a 0-d tensor or have shape [{batch}], got {tuple(lam.shape)}")
    _checks.same_device(lam, "lam", ref, "x" if ref.dim() > 1 else "y")
    return lam.detach().to(dtype)


def _check_lam_values(lam: Tensor) -> None:
    if lam.numel() and not bool(((lam >= 0) & (lam <= 1)).all()):
        raise ValueError(f"lam must be in [0, 1], got values {lam.reshape(-1)[:5].tolist()}")


def _check_perm(perm: object, batch: int, ref: Tensor, ref_name: str) -> Tensor:
    if perm is None:
        return flip_perm(batch, ref.device)
    return _checks.long_vector(perm, batch, "perm", ref, ref_name)


def face_mixup(
    x: Tensor,
    lam: Tensor | float,
    perm: Tensor | None = None,
    out: Tensor | None = None,
    *,
    with_originals: bool = False,
    backend: str | None = None,
    validate: bool | None = None,
) -> Tensor:
    """Mix each image with its partner: ``lam * x + (1 - lam) * x[perm]``, out of place.

    Args:
        x: ``[B, ...]`` floating images (typically ``[B, C, H, W]``); any B, odd included.
        lam: Mixup weight in [0, 1]: a number or 0-d tensor (one per batch, SSFER's ``batch`` mode) or a
            ``[B]`` tensor (one per sample: timm's ``elem`` mode; ``pair`` mode when ``lam[i] == lam[perm[i]]``).
        perm: ``[B]`` int64 partner of each image; ``None`` is SSFER's flip pairing (``i`` with ``B-1-i``).
        out: optional contiguous buffer of ``x``'s dtype: ``[B, ...]`` receives the mixed images, ``[2B, ...]``
            the originals then the mixed images. Written without autograd (like torch's ``out=``).
        with_originals: without ``out``, return ``[2B, ...]`` = ``[x; mixed]`` (one forward pass for both).
        validate: check ``perm`` and ``lam`` values (``None``: on CPU tensors only; a GPU check synchronises).

    Returns:
        The mixed images (``[B, ...]``) or ``[x; mixed]`` (``[2B, ...]``), in ``x``'s dtype; math in float32
        (float64 for float64 ``x``). Differentiable in ``x`` (``lam`` and ``perm`` are constants).
    """
    x = _checks.tensor(x, "x")
    _checks.floating(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have shape [B, ...], got a 0-d tensor")
    b = x.shape[0]
    perm = _check_perm(perm, b, x, "x")
    lam = _check_lam(lam, b, x, acc_dtype(x))
    chosen = resolve_backend(x.device, backend)
    if _checks.values_checked(validate, perm, lam, backend=chosen):
        _checks.index_range(perm, b, "perm", "partner indices")
        _check_lam_values(lam)
    if out is None:
        return dispatch("face_mixup", chosen)(x, lam, perm, bool(with_originals))
    out = _checks.tensor(out, "out")
    _checks.same_device(out, "out", x, "x")
    if out.dtype != x.dtype:
        raise TypeError(f"out must have x's dtype {x.dtype}, got {out.dtype}")
    if tuple(out.shape[1:]) != tuple(x.shape[1:]) or out.shape[0] not in (b, 2 * b):
        raise ValueError(
            f"out must have shape [{b}, ...] or [{2 * b}, ...] like x {tuple(x.shape)}, got {tuple(out.shape)}"
        )
    if with_originals and out.shape[0] != 2 * b:
        raise ValueError(f"with_originals=True needs out of shape [{2 * b}, ...], got {tuple(out.shape)}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
        raise RuntimeError("face_mixup(out=...) does not support autograd; call it without out")
    if out.numel() and x.numel() and out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        raise ValueError("out must not overlap x (face_mixup reads x[perm[i]] after writing row i)")
    dispatch("face_mixup_out", chosen)(x, lam, perm, out)
    return out


def mixup_soft_targets(
    y: Tensor,
    num_classes: int,
    lam: Tensor | float,
    perm: Tensor | None = None,
    label_smoothing: float = 0.0,
    *,
    backend: str | None = None,
    validate: bool | None = None,
) -> Tensor:
    """Mixup targets, timm's ``mixup_target`` with partner ``perm``: ``lam * y1 + (1 - lam) * y1[perm]``.

    Args:
        y: ``[B]`` int64 class labels, or ``[B, K]`` soft labels (e.g. FERPlus probabilities; smoothed as
            ``y * (1 - s) + s / K`` with plain torch ops on every backend).
        num_classes: K.
        lam: as in :func:`face_mixup` (the same weights that mixed the images).
        perm: partners, as in :func:`face_mixup`.
        label_smoothing: ``s`` in [0, 1]: the label gets ``1 - s + s/K``, every other class ``s/K``.
        validate: check label, ``perm`` and ``lam`` values (``None``: on CPU tensors only).

    Returns:
        ``[B, K]`` float32 (float64 when ``lam`` is a float64 tensor).
    """
    y = _checks.tensor(y, "y")
    num_classes = _checks.positive_int(num_classes, "num_classes")
    label_smoothing = _checks.unit_interval(label_smoothing, "label_smoothing")
    if y.dim() not in (1, 2) or (y.dim() == 2 and y.shape[1] != num_classes):
        raise ValueError(f"y must have shape [B] (labels) or [B, {num_classes}] (soft labels), got {tuple(y.shape)}")
    b = y.shape[0]
    perm = _check_perm(perm, b, y, "y")
    acc = acc_dtype(lam) if isinstance(lam, Tensor) else torch.float32
    lam = _check_lam(lam, b, y, acc)
    chosen = resolve_backend(y.device, backend)
    checked = _checks.values_checked(validate, y, perm, lam, backend=chosen if y.dim() == 1 else "reference")
    if checked:
        _checks.index_range(perm, b, "perm", "partner indices")
        _check_lam_values(lam)
    if y.dim() == 2:
        _checks.floating(y, "y")
        lam_c = lam.reshape(-1).expand(b).reshape(b, 1)
        y1 = y.detach().to(acc) * (1 - label_smoothing) + label_smoothing / num_classes
        return y1 * lam_c + y1[perm] * (1 - lam_c)
    _checks.index(y, "y")
    if checked:
        _checks.index_range(y, num_classes, "y", "class labels")
    return dispatch("mixup_soft_targets", chosen)(y, num_classes, lam, perm, label_smoothing)
