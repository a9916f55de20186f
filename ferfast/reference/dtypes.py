"""The accumulation dtype rule shared by every op: math runs in float32, or float64 when an input is float64."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["acc_dtype"]


def acc_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any of ``tensors`` is float64 (so fp64 gradchecks are meaningful), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
