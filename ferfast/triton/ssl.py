"""Triton kernel for FixMatch's unlabeled loss (SSFER stage 2) fused with its gradient
(``ferfast_triton::fixmatch_loss``).

One program per sample holds both rows of ``K`` logits (``BLOCK_K = next_power_of_2(K)``). From
the weak row it takes the pseudo-label, the *first* index of the largest logit (of the first
NaN when there is one, as ``torch.argmax``), and the confidence ``max softmax = 1 / sum_k
exp(weak_k - max)``; the mask is ``confidence >= threshold``. From the strong row it takes the
cross-entropy ``lse(strong) - strong[pseudo]`` and, with ``compute_grad``, writes
``B * d loss / d strong = mask * (softmax(strong) - onehot(pseudo))`` in float32 (backward applies
``grad_loss / B`` in fp32 and rounds once to the logits' dtype: fp16 + GradScaler safe).
The per-sample ``mask * CE`` and the mask are summed by deterministic torch ``sum``s in float64,
all on device: no host synchronisation.

``threshold`` reaches the kernel as a ``constexpr`` so that it is compared in the accumulation
dtype exactly as the reference does (a float kernel argument would be float32): one compilation
per threshold value, a fixed hyper-parameter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ferfast.reference.dtypes import acc_dtype
from ferfast.triton.utils import (
    calculate_settings,
    cast_rn,
    check,
    check_dim,
    check_floating,
    check_same_device,
    define_op,
    div_acc,
    launch,
    softmax_parts,
    to_acc,
)

__all__ = ["fixmatch_loss"]


@triton.jit
def _fixmatch_loss_kernel(
    weak_ptr,
    strong_ptr,
    pseudo_ptr,
    mask_ptr,
    grad_ptr,
    partial_ptr,
    B,
    K,
    THRESHOLD: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    valid = k < K
    row = i * K + k
    weak = to_acc(tl.load(weak_ptr + row, mask=valid, other=float("-inf")), WIDE)
    _, s_weak, _ = softmax_parts(weak, valid)
    # pseudo-label: the first NaN if any (torch.argmax), else the first index of the maximum
    first_nan = tl.min(tl.where(weak != weak, k, BLOCK_K), axis=0)
    first_max = tl.min(tl.where(weak == tl.max(weak, axis=0), k, BLOCK_K), axis=0)
    pseudo = tl.where(first_nan < BLOCK_K, first_nan, first_max)
    # the pseudo-label's softmax probability: exp(0) / sum
    confidence = div_acc(tl.full((), 1.0, s_weak.dtype), s_weak, WIDE)
    mask = tl.where(confidence >= tl.full((), THRESHOLD, s_weak.dtype), 1.0, 0.0).to(s_weak.dtype)
    is_label = k == pseudo
    strong = to_acc(tl.load(strong_ptr + row, mask=valid, other=float("-inf")), WIDE)
    e_strong, s_strong, lse_strong = softmax_parts(strong, valid)
    ce = lse_strong - tl.sum(tl.where(is_label, strong, 0.0), axis=0)
    tl.store(partial_ptr + i, ce * mask)
    tl.store(mask_ptr + i, mask)
    tl.store(pseudo_ptr + i, pseudo.to(tl.int64))
    if COMPUTE_GRAD:
        grad = mask * (div_acc(e_strong, s_strong, WIDE) - tl.where(is_label, 1.0, 0.0))
        tl.store(grad_ptr + row, cast_rn(grad, grad_ptr.dtype.element_ty), mask=valid)


@define_op("ferfast_triton::fixmatch_loss")
def fixmatch_loss(
    logits_weak: Tensor, logits_strong: Tensor, threshold: float, compute_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_floating(logits_weak, "logits_weak")
    check_floating(logits_strong, "logits_strong")
    check_dim(logits_weak, 2, "logits_weak")
    b, k = logits_weak.shape
    check(b > 0 and k > 0, f"logits_weak must be a non-empty [B, K], got {tuple(logits_weak.shape)}")
    check(
        logits_strong.shape == logits_weak.shape,
        f"logits_strong must have logits_weak's shape {tuple(logits_weak.shape)}, got {tuple(logits_strong.shape)}",
    )
    check_same_device(logits_strong, "logits_strong", logits_weak, "logits_weak")
    check(0.0 <= threshold <= 1.0, f"threshold must be in [0, 1], got {threshold}")
    block_k, num_warps = calculate_settings(k, "the number of classes K")
    acc = acc_dtype(logits_weak, logits_strong)
    wide = acc == torch.float64
    logits_weak = logits_weak.contiguous()
    logits_strong = logits_strong.contiguous()
    pseudo = logits_weak.new_empty((b,), dtype=torch.long)
    mask = logits_weak.new_empty((b,), dtype=acc)
    # B * d loss / d strong, kept in the accumulation dtype ([B, K] is small): backward rounds once
    grad = logits_strong.new_empty((b, k) if compute_grad else (0,), dtype=acc)
    partial = logits_weak.new_empty((b,), dtype=acc)
    launch(_fixmatch_loss_kernel, (b,))(
        logits_weak,
        logits_strong,
        pseudo,
        mask,
        grad,
        partial,
        b,
        k,
        THRESHOLD=float(threshold),
        COMPUTE_GRAD=bool(compute_grad),
        WIDE=wide,
        BLOCK_K=block_k,
        num_warps=num_warps,
    )
    loss = (partial.sum(dtype=torch.float64) / b).to(acc)
    mask_rate = (mask.sum(dtype=torch.float64) / b).to(acc)
    return loss, mask_rate, pseudo, mask, grad
