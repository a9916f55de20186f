"""Triton kernel for the fused losses' backward (``ferfast_triton::_scale_grad``): ``grad * scale`` in one pass.

The fused losses store un-normalised gradients (``mask * (pred - target)`` in ``pred``'s dtype, ``B`` times
the logits' gradients in float32); backward multiplies them by ``scale = grad_loss * factor / denom``, a
0-d device tensor in the accumulation dtype. Here that product is computed in float32 (float64 for float64
inputs) and rounded once to ``dtype``: one read and one write, where eager torch would need three passes
(up-cast, multiply, down-cast) for an fp16/bf16 gradient. ``scale`` is read on the device: no host
synchronisation, whatever its value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ferfast.reference.dtypes import acc_dtype
from ferfast.triton.utils import cast_rn, cdiv, check, check_floating, check_same_device, define_op, launch, to_acc

__all__ = ["scale_grad"]

_BLOCK = 4096


@triton.jit
def _scale_grad_kernel(grad_ptr, scale_ptr, out_ptr, n, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    scale = to_acc(tl.load(scale_ptr), WIDE)
    g = to_acc(tl.load(grad_ptr + offs, mask=valid, other=0), WIDE)
    tl.store(out_ptr + offs, cast_rn(g * scale, out_ptr.dtype.element_ty), mask=valid)


@define_op("ferfast_triton::_scale_grad")
def scale_grad(grad: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``(grad * scale).to(dtype)`` with fp32 math (fp64 when ``grad``, ``scale`` or ``dtype`` is fp64)."""
    check_floating(grad, "grad")
    check_floating(scale, "scale")
    check(scale.numel() == 1, f"scale must hold one value, got shape {tuple(scale.shape)}")
    check_same_device(grad, "grad", scale, "scale")
    grad = grad.contiguous()
    out = torch.empty(grad.shape, dtype=dtype, device=grad.device)
    n = grad.numel()
    if n > 0:
        wide = acc_dtype(grad, scale, dtype) == torch.float64
        launch(_scale_grad_kernel, (cdiv(n, _BLOCK),))(grad, scale.reshape(()), out, n, WIDE=wide, BLOCK=_BLOCK)
    return out
