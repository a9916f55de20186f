"""The accumulation dtype rule shared by every op: math runs in float32, or float64 when an input is float64."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["acc_dtype"]


def acc_dtype(*tensors: Tensor | torch.dtype) -> torch.dtype:
    """float64 when any of ``tensors`` (tensors or dtypes) is float64 (so fp64 gradchecks are meaningful), else
    float32."""
    wide = any((t if isinstance(t, torch.dtype) else t.dtype) == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32
