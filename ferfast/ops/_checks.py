"""Argument checks shared by the public ops: clear ``TypeError``/``ValueError`` naming the argument.

Two kinds. Metadata checks (shape, dtype, device) always run and never read a tensor. Value checks
(index ranges, box corners, ``lam`` and IoUs in [0, 1]) read tensors back to the host, which synchronises a
GPU, so they run only where :func:`values_checked` says: ``validate=True``; or ``validate=None``
(the default) with every tensor on the CPU while :func:`value_checks` is on (the default). Never on
CUDA tensors unless asked, never while ``torch.compile`` traces, never for the ``cpu`` backend
(its C++ kernels check the values as they read them), except for values its kernels do not check
(``facemix_loss``'s ``iou``: asked with the default ``backend``). ``value_checks(False)`` makes a CPU run
read exactly what a GPU run reads: nothing (the engine's "no host reads per step" tests use it).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import torch
from torch import Tensor


def tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating(t: Tensor, name: str) -> None:
    if not t.is_floating_point():
        hint = " (convert integer images with .float() and scale them first)" if name == "imgs" else ""
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}{hint}")


def index(t: Tensor, name: str) -> None:
    if t.dtype != torch.long:
        raise TypeError(f"{name} must be an int64 tensor, got {t.dtype}")


def ndim(t: Tensor, dims: int, name: str, layout: str) -> None:
    if t.dim() != dims:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")


def same_device(t: Tensor, name: str, ref: Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; put them on one device")


def batch(t: Tensor, name: str, ref: Tensor, ref_name: str) -> None:
    if t.shape[0] != ref.shape[0]:
        raise ValueError(f"{name} has batch size {t.shape[0]} but {ref_name} has {ref.shape[0]}")


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def mask_ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {value!r}")
    return float(value)


def patch_grid(imgs: Tensor, patch_size: int) -> tuple[int, int]:
    """Checks ``imgs`` [B,C,H,W] against ``patch_size``; returns the grid (H/p, W/p)."""
    ndim(imgs, 4, "imgs", "[B, C, H, W]")
    floating(imgs, "imgs")
    h, w = imgs.shape[2], imgs.shape[3]
    if h % patch_size or w % patch_size:
        raise ValueError(f"imgs height and width ({h}, {w}) must be divisible by patch_size={patch_size}")
    return h // patch_size, w // patch_size


def unit_interval(value: object, name: str) -> float:
    """A Python number in [0, 1] (no device access)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


_CPU_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> bool:
    """Turn the default (``validate=None``) value checks on CPU tensors on or off; returns the previous setting."""
    global _CPU_VALUE_CHECKS
    previous, _CPU_VALUE_CHECKS = _CPU_VALUE_CHECKS, bool(enabled)
    return previous


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """``with value_checks(False):`` runs CPU tensors through the ops reading no values, as on a GPU."""
    previous = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def values_checked(validate: bool | None, *tensors: Tensor, backend: str = "reference") -> bool:
    """Whether to check tensor *values* (index ranges, box corners, ``lam``) in Python: ``validate=None``
    checks CPU tensors only (where it is cheap) while :func:`value_checks` is on; on a GPU it would
    synchronise, so it runs only with ``validate=True``. Never while ``torch.compile`` traces, and not
    for the ``cpu`` backend, whose C++ kernels check the values themselves as they read them (raising
    the same ``ValueError``)."""
    if torch.compiler.is_compiling() or backend == "cpu":
        return False
    if validate is None:
        return _CPU_VALUE_CHECKS and all(t.device.type == "cpu" for t in tensors)
    return bool(validate)


def index_range(t: Tensor, upper: int, name: str, what: str) -> None:
    """Every entry of ``t`` in ``[0, upper)`` (reads the values: call under :func:`values_checked`)."""
    if t.numel() and not bool(((t >= 0) & (t < upper)).all()):
        bad = t[(t < 0) | (t >= upper)][:5].tolist()
        raise ValueError(f"{name} must hold {what} in [0, {upper}), got {bad}")


def unit_values(t: Tensor, name: str, what: str) -> None:
    """Every entry of the floating ``t`` in [0, 1] and none NaN (reads the values: call under
    :func:`values_checked`). A few ulps above 1 pass: an IoU of two nearly equal boxes may round there."""
    slack = 1.0 + 4 * torch.finfo(t.dtype).eps
    ok = (t >= 0) & (t <= slack)  # NaN compares false
    if t.numel() and not bool(ok.all()):
        bad = t[~ok][:5].tolist()
        raise ValueError(f"{name} must hold {what} in [0, 1], got {bad}")


def long_vector(t: object, length: int, name: str, ref: Tensor, ref_name: str) -> Tensor:
    """A ``[length]`` int64 tensor on ``ref``'s device."""
    t = tensor(t, name)
    index(t, name)
    ndim(t, 1, name, f"[{length}]")
    if t.shape[0] != length:
        raise ValueError(f"{name} must have shape [{length}], got {tuple(t.shape)}")
    same_device(t, name, ref, ref_name)
    return t
