"""Maps a resolved backend name to the op namespace that implements it."""

from __future__ import annotations

from typing import Any

import torch


def native() -> Any:
    return torch.ops.ferfast


def triton_ops() -> Any:
    import ferfast.triton  # noqa: F401  (registers torch.ops.ferfast_triton on first use)

    return torch.ops.ferfast_triton


def op_namespace(backend: str) -> Any:
    """``torch.ops`` namespace for a non-reference backend."""
    if backend in ("cpu", "cuda"):
        return native()
    if backend == "triton":
        return triton_ops()
    raise ValueError(f"no op namespace for backend {backend!r}")
