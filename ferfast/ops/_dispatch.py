"""The one dispatch helper: an op's implementation on a resolved backend (the reference, or the ``torch.ops``
namespace of the backend that implements it), from the declarations in :mod:`ferfast._registry`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ferfast._registry import OPS


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


def dispatch(name: str, backend: str) -> Callable[..., Any]:
    """The implementation of op ``name`` on the resolved ``backend`` (``ferfast.backends.resolve_backend``).

    Every implementation takes the op's schema: the reference adapter of :data:`SPECS` or the backend's
    ``torch.ops`` op. The public ops check their arguments, resolve the backend and call this; nothing else
    in ``ferfast.ops`` chooses among backends.
    """
    op = OPS[name]
    if backend == "reference":
        return op.reference
    if backend not in op.backends:
        raise ValueError(f"{name} has no {backend!r} kernel; it runs on {('reference', *op.backends)}")
    return getattr(op_namespace(backend), name)
