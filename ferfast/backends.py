"""Backend registry and selection: ``reference``, ``cpu`` (C++), ``cuda`` and ``triton``.

``FERFAST_BACKEND`` (``auto`` by default) picks globally; every op also takes a
``backend=`` argument. ``auto`` picks per device: CUDA tensors go to Triton, then
the CUDA kernels, then the reference; CPU tensors go to the C++ kernels, then the
reference. A global choice that cannot serve a tensor's device falls back to
``auto`` with a warning; an explicit per-call choice that cannot raises.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from ferfast import _extension

__all__ = ["BACKENDS", "available_backends", "default_backend", "resolve_backend", "triton_available"]

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


def _env_backend() -> str:
    value = os.environ.get("FERFAST_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"FERFAST_BACKEND must be one of {BACKENDS}, got {value!r}")
    return value


#: The global choice, read once at import (set ``FERFAST_BACKEND`` before importing ferfast).
_GLOBAL_BACKEND = _env_backend()


def default_backend() -> str:
    """The global backend choice (``FERFAST_BACKEND``)."""
    return _GLOBAL_BACKEND


def set_default_backend(backend: str) -> None:
    """Change the global backend choice at run time (same values as ``FERFAST_BACKEND``)."""
    global _GLOBAL_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _GLOBAL_BACKEND = backend


_TRITON_AVAILABLE: dict[str, bool] = {}  # a plain dict, not functools.cache: dynamo traces through it


def triton_available(device_type: str) -> bool:
    """Triton runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``."""
    if device_type not in _TRITON_AVAILABLE:
        found = importlib.util.find_spec("triton") is not None
        if device_type == "cuda":
            found = found and torch.cuda.is_available()
        elif device_type == "cpu":
            found = found and os.environ.get("TRITON_INTERPRET", "0") == "1"
        else:
            found = False
        _TRITON_AVAILABLE[device_type] = found
    return _TRITON_AVAILABLE[device_type]


triton_available.cache_clear = _TRITON_AVAILABLE.clear  # type: ignore[attr-defined]  # for tests changing the env


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device``, fastest first."""
    device_type = torch.device(device).type
    found = []
    if device_type == "cuda":
        if triton_available("cuda"):
            found.append("triton")
        if _extension.HAS_CUDA_OPS:
            found.append("cuda")
    elif device_type == "cpu":
        if _extension.HAS_OPS:
            found.append("cpu")
    found.append("reference")
    return found


def _auto(device_type: str) -> str:
    return available_backends(device_type)[0]


def _supports(backend: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return device_type == "cpu" and _extension.HAS_OPS
    if backend == "cuda":
        return device_type == "cuda" and _extension.HAS_CUDA_OPS
    if backend == "triton":
        return triton_available(device_type)
    return False


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend an op runs with for tensors on ``device``."""
    device_type = device.type
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            return _auto(device_type)
        if not _supports(backend, device_type):
            raise ValueError(
                f"backend={backend!r} cannot run on {device_type} tensors here; "
                f"available: {available_backends(device_type)}"
                + (f" (native library: {_extension.LOAD_ERROR})" if _extension.LOAD_ERROR else "")
            )
        return backend
    choice = _GLOBAL_BACKEND
    if choice == "auto":
        return _auto(device_type)
    if _supports(choice, device_type):
        return choice
    _warn_fallback(choice, device_type)
    return _auto(device_type)


@functools.cache
def _warn_fallback(choice: str, device_type: str) -> None:
    warnings.warn(
        f"FERFAST_BACKEND={choice} cannot run on {device_type} tensors here; using {_auto(device_type)!r}",
        RuntimeWarning,
        stacklevel=4,
    )
