"""Triton kernels for face-IoU Mixup (SSFER stage 1): ``ferfast_triton::face_mixup``, ``face_mixup_out``,
``mixup_soft_targets`` and ``facemix_loss``.

- ``face_mixup``: a bandwidth-bound elementwise kernel on ``x`` viewed as ``[B, D]``. One
  program per (row ``i``, block of ``BLOCK`` elements) reads ``x[i]`` and ``x[perm[i]]`` and writes
  ``lam_i * x[i] + (1 - lam_i) * x[perm[i]]`` (float32 math, float64 for float64 ``x``, one
  rounding to ``x``'s dtype). With the originals it also writes the ``x[i]`` it read to
  ``out[i]`` and the mixed row to ``out[B + i]``: ``[x; mixed]`` in one pass over ``x``.
  Offsets are int64 (a ``64 x 3 x 224 x 224`` batch is 9.6M elements; larger ones overflow int32).
- ``mixup_soft_targets``: one program per (row, block of classes); the smoothed one-hots
  ``onehot_s(y_i)`` and ``onehot_s(y[perm_i])`` are built from the labels, never stored.
- ``facemix_loss``: one program per row ``j`` holds its ``K`` logits (``BLOCK_K =
  next_power_of_2(K)``). It computes its real-image weight ``w_j = (1 - iou_j) + sum_{i: perm_i
  == j} (1 - iou_i)`` by scanning ``perm`` in blocks (deterministic, no atomics), both
  cross-entropies with their log-sum-exps, the row's loss ``CE_soft(mixed_j) + w_j CE(real_j)``
  into a per-row buffer, and both gradients times ``B`` in float32 (Liger's fused-CE idea; backward
  applies ``grad_loss / B`` in fp32 and rounds once to the logits' dtype: fp16 + GradScaler safe).
  The buffer is summed by a deterministic torch ``sum`` in float64, all on device: no host
  synchronisation.

Index arguments (``perm``, ``y``) are not range-checked on the host (that would synchronise a
GPU): an out-of-range partner reads zeros (``face_mixup``) or no label (the others). Kernels
compiled with ``TRITON_DEBUG=1`` assert the ranges.

``label_smoothing`` reaches the kernel as a ``constexpr`` (exact in float64; one compilation
per value, and it is a fixed hyper-parameter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from ferfast.reference.dtypes import acc_dtype
from ferfast.triton.utils import (
    calculate_settings,
    cast_rn,
    cdiv,
    check,
    check_dim,
    check_floating,
    check_lam,
    check_long,
    check_perm,
    check_same_device,
    define_op,
    div_acc,
    launch,
    limit,
    next_power_of_2,
    softmax_parts,
    to_acc,
)

__all__ = ["face_mixup", "face_mixup_out", "facemix_loss", "mixup_soft_targets"]

#: Elements of a row one ``face_mixup`` program handles (8 warps: 16 per thread).
MIXUP_BLOCK = 4096
#: Grid axis 1 limit of a CUDA launch.
_MAX_GRID_Y = 65535


# ---- face_mixup --------------------------------------------------------------------------------


@triton.jit
def _face_mixup_kernel(
    x_ptr,
    lam_ptr,
    perm_ptr,
    out_ptr,
    B,
    D,
    LAM_PER_ROW: tl.constexpr,
    WITH_ORIGINALS: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = e < D
    partner = tl.load(perm_ptr + row)
    tl.device_assert((partner >= 0) & (partner < B), "face_mixup: perm out of range")
    ok = (partner >= 0) & (partner < B)
    if LAM_PER_ROW:
        lam = tl.load(lam_ptr + row)  # already in the accumulation dtype
    else:
        lam = tl.load(lam_ptr)
    xi = tl.load(x_ptr + row * D + e, mask=valid, other=0)
    xp = tl.load(x_ptr + partner * D + e, mask=valid & ok, other=0)
    mixed = to_acc(xi, WIDE) * lam + to_acc(xp, WIDE) * (1 - lam)
    mixed = cast_rn(mixed, out_ptr.dtype.element_ty)
    if WITH_ORIGINALS:
        tl.store(out_ptr + row * D + e, xi, mask=valid)
        tl.store(out_ptr + (B + row) * D + e, mixed, mask=valid)
    else:
        tl.store(out_ptr + row * D + e, mixed, mask=valid)


def _check_face_mixup(x: Tensor, lam: Tensor, perm: Tensor) -> None:
    check_floating(x, "x")
    check(x.dim() >= 1, "x must have a batch dimension, got a scalar")
    b = x.shape[0]
    check_lam(lam, b, x, "x")
    check_perm(perm, b, x, "x")


def _launch_face_mixup(x: Tensor, lam: Tensor, perm: Tensor, out: Tensor, with_originals: bool) -> None:
    """Writes the mixed rows of ``x`` into ``out`` (``[B, ...]``, or ``[2B, ...]`` after the originals)."""
    b = x.shape[0]
    d = x.numel() // b if b > 0 else 0
    if b == 0 or d == 0:
        return
    acc = acc_dtype(x)
    wide = acc == torch.float64
    x = x.contiguous()
    perm = perm.contiguous()
    lam = lam.to(acc).reshape(-1).contiguous()
    block, num_warps = calculate_settings(min(d, MIXUP_BLOCK))
    grid = (b, cdiv(d, block))
    limit(grid[1] <= _MAX_GRID_Y, f"x has too many elements per sample for one launch: {d}")
    launch(_face_mixup_kernel, grid)(
        x,
        lam,
        perm,
        out,
        b,
        d,
        LAM_PER_ROW=lam.numel() != 1,
        WITH_ORIGINALS=bool(with_originals),
        WIDE=wide,
        BLOCK=block,
        num_warps=num_warps,
    )


@define_op("ferfast_triton::face_mixup")
def face_mixup(x: Tensor, lam: Tensor, perm: Tensor, with_originals: bool) -> Tensor:
    _check_face_mixup(x, lam, perm)
    b = x.shape[0]
    out = x.new_empty(((2 if with_originals else 1) * b, *x.shape[1:]))
    _launch_face_mixup(x, lam, perm, out, with_originals)
    return out


def _overlaps(a: Tensor, b: Tensor) -> bool:
    """Whether the memory of two (contiguous) tensors overlaps (the C++ check; unknown for fake tensors)."""
    if a.numel() == 0 or b.numel() == 0 or is_fake(a) or is_fake(b):
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


@define_op("ferfast_triton::face_mixup_out")
def face_mixup_out(x: Tensor, lam: Tensor, perm: Tensor, out: Tensor) -> None:
    _check_face_mixup(x, lam, perm)
    check_same_device(out, "out", x, "x")
    check(out.dtype == x.dtype, f"out must have x's dtype {x.dtype}, got {out.dtype}")
    check(out.is_contiguous(), "out must be contiguous")
    b = x.shape[0]
    check(
        out.dim() == x.dim() and out.shape[1:] == x.shape[1:] and out.shape[0] in (b, 2 * b),
        f"out must have shape [B, ...] or [2B, ...] for x of shape {tuple(x.shape)}, got {tuple(out.shape)}",
    )
    check(not _overlaps(out, x), "out must not overlap x")
    _launch_face_mixup(x, lam, perm, out, out.shape[0] == 2 * b and b > 0)


# ---- mixup_soft_targets ------------------------------------------------------------------------


@triton.jit
def _mixup_soft_targets_kernel(
    y_ptr,
    lam_ptr,
    perm_ptr,
    out_ptr,
    B,
    K,
    ON: tl.constexpr,
    OFF: tl.constexpr,
    LAM_PER_ROW: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    valid = k < K
    partner = tl.load(perm_ptr + row)
    tl.device_assert((partner >= 0) & (partner < B), "mixup_soft_targets: perm out of range")
    ok = (partner >= 0) & (partner < B)
    label = tl.load(y_ptr + row)
    label_p = tl.load(y_ptr + partner, mask=ok, other=-1)
    tl.device_assert((label >= 0) & (label < K), "mixup_soft_targets: y out of range")
    if LAM_PER_ROW:
        lam = tl.load(lam_ptr + row)  # the output's dtype
    else:
        lam = tl.load(lam_ptr)
    on = tl.full((), ON, lam.dtype)
    off = tl.full((), OFF, lam.dtype)
    target = tl.where(k == label, on, off)
    target_p = tl.where(k == label_p, on, off)
    tl.store(out_ptr + row * K + k, target * lam + target_p * (1 - lam), mask=valid)


@define_op("ferfast_triton::mixup_soft_targets")
def mixup_soft_targets(y: Tensor, num_classes: int, lam: Tensor, perm: Tensor, label_smoothing: float) -> Tensor:
    check_long(y, "y")
    check(y.dim() == 1, f"y must have shape [B] (int64 class labels), got {tuple(y.shape)}")
    check(num_classes > 0, f"num_classes must be positive, got {num_classes}")
    check(0.0 <= label_smoothing <= 1.0, f"label_smoothing must be in [0, 1], got {label_smoothing}")
    b = y.shape[0]
    check_lam(lam, b, y, "y")
    check_perm(perm, b, y, "y")
    acc = acc_dtype(lam)
    out = y.new_empty((b, num_classes), dtype=acc)
    if out.numel() > 0:
        off = label_smoothing / num_classes  # in double precision, as timm and the C++ op
        on = 1.0 - label_smoothing + off
        lam = lam.to(acc).reshape(-1).contiguous()
        block_k, num_warps = calculate_settings(min(num_classes, 1024))
        grid = (b, cdiv(num_classes, block_k))
        launch(_mixup_soft_targets_kernel, grid)(
            y.contiguous(),
            lam,
            perm.contiguous(),
            out,
            b,
            num_classes,
            ON=on,
            OFF=off,
            LAM_PER_ROW=lam.numel() != 1,
            BLOCK_K=block_k,
            num_warps=num_warps,
        )
    return out


# ---- facemix_loss ------------------------------------------------------------------------------


@triton.jit
def _facemix_loss_kernel(
    real_ptr,
    mixed_ptr,
    y_ptr,
    ysoft_ptr,
    iou_ptr,
    perm_ptr,
    grad_real_ptr,
    grad_mixed_ptr,
    partial_ptr,
    B,
    K,
    COMPUTE_GRAD: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    j = tl.program_id(0).to(tl.int64)  # one sample
    # w_j = (1 - iou_j) + sum over the samples i mixed with j (perm_i == j) of (1 - iou_i), in ascending i
    w_acc = to_acc(tl.zeros([BLOCK_B], dtype=tl.float32), WIDE)
    for i0 in range(0, B, BLOCK_B):
        i = i0 + tl.arange(0, BLOCK_B)
        in_batch = i < B
        partner = tl.load(perm_ptr + i, mask=in_batch, other=-1)
        iou_i = to_acc(tl.load(iou_ptr + i, mask=in_batch, other=1), WIDE)
        w_acc += tl.where(partner == j, 1 - iou_i, 0.0)
    w = (1 - to_acc(tl.load(iou_ptr + j), WIDE)) + tl.sum(w_acc, axis=0)

    k = tl.arange(0, BLOCK_K)
    valid = k < K
    row = j * K + k
    label = tl.load(y_ptr + j)
    tl.device_assert((label >= 0) & (label < K), "facemix_loss: y out of range")
    is_label = k == label
    # CE(real_j, y_j) = lse(real_j) - real_j[y_j]
    real = to_acc(tl.load(real_ptr + row, mask=valid, other=float("-inf")), WIDE)
    e_real, s_real, lse_real = softmax_parts(real, valid)
    ce_real = lse_real - tl.sum(tl.where(is_label, real, 0.0), axis=0)
    # CE_soft(mixed_j, y_soft_j) = sum_k y_soft_jk (lse(mixed_j) - mixed_jk)
    mixed = to_acc(tl.load(mixed_ptr + row, mask=valid, other=float("-inf")), WIDE)
    y_soft = to_acc(tl.load(ysoft_ptr + row, mask=valid, other=0), WIDE)
    e_mixed, s_mixed, lse_mixed = softmax_parts(mixed, valid)
    ce_soft = tl.sum(y_soft * tl.where(valid, lse_mixed - mixed, 0.0), axis=0)  # y_soft is 0 outside
    tl.store(partial_ptr + j, ce_soft + w * ce_real)
    if COMPUTE_GRAD:
        g_real = w * (div_acc(e_real, s_real, WIDE) - tl.where(is_label, 1.0, 0.0))
        tl.store(grad_real_ptr + row, cast_rn(g_real, grad_real_ptr.dtype.element_ty), mask=valid)
        g_mixed = div_acc(e_mixed, s_mixed, WIDE) * tl.sum(y_soft, axis=0) - y_soft
        tl.store(grad_mixed_ptr + row, cast_rn(g_mixed, grad_mixed_ptr.dtype.element_ty), mask=valid)


@define_op("ferfast_triton::facemix_loss")
def facemix_loss(
    logits_real: Tensor, logits_mixed: Tensor, y: Tensor, y_soft: Tensor, iou: Tensor, perm: Tensor, compute_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    check_floating(logits_real, "logits_real")
    check_floating(logits_mixed, "logits_mixed")
    check_dim(logits_real, 2, "logits_real")
    b, k = logits_real.shape
    check(b > 0 and k > 0, f"logits_real must be a non-empty [B, K], got {tuple(logits_real.shape)}")
    check(
        logits_mixed.dtype == logits_real.dtype,
        f"logits_mixed must have logits_real's dtype {logits_real.dtype}, got {logits_mixed.dtype}",
    )
    check(
        logits_mixed.shape == logits_real.shape,
        f"logits_mixed must have logits_real's shape {tuple(logits_real.shape)}, got {tuple(logits_mixed.shape)}",
    )
    check_long(y, "y")
    check(y.dim() == 1 and y.shape[0] == b, f"y must have shape [{b}], got {tuple(y.shape)}")
    check_floating(y_soft, "y_soft")
    check(
        y_soft.shape == logits_real.shape,
        f"y_soft must have shape {tuple(logits_real.shape)}, got {tuple(y_soft.shape)}",
    )
    check_floating(iou, "iou")
    check(iou.dim() == 1 and iou.shape[0] == b, f"iou must have shape [{b}], got {tuple(iou.shape)}")
    check_long(perm, "perm")
    check(perm.dim() == 1 and perm.shape[0] == b, f"perm must have shape [{b}], got {tuple(perm.shape)}")
    check_same_device(logits_mixed, "logits_mixed", logits_real, "logits_real")
    check_same_device(y, "y", logits_real, "logits_real")
    check_same_device(y_soft, "y_soft", logits_real, "logits_real")
    check_same_device(iou, "iou", logits_real, "logits_real")
    check_same_device(perm, "perm", logits_real, "logits_real")
    block_k, num_warps = calculate_settings(k, "the number of classes K")
    acc = acc_dtype(logits_real, logits_mixed)
    logits_real = logits_real.contiguous()
    logits_mixed = logits_mixed.contiguous()
    # B * d loss / d logits, kept in the accumulation dtype ([B, K] is small): backward rounds once
    grad_shape = (b, k) if compute_grad else (0,)
    grad_real = logits_real.new_empty(grad_shape, dtype=acc)
    grad_mixed = logits_real.new_empty(grad_shape, dtype=acc)
    partial = logits_real.new_empty((b,), dtype=acc)
    launch(_facemix_loss_kernel, (b,))(
        logits_real,
        logits_mixed,
        y.contiguous(),
        y_soft.contiguous(),
        iou.contiguous(),
        perm.contiguous(),
        grad_real,
        grad_mixed,
        partial,
        b,
        k,
        COMPUTE_GRAD=bool(compute_grad),
        WIDE=acc == torch.float64,
        BLOCK_K=block_k,
        BLOCK_B=min(next_power_of_2(b), 1024),
        num_warps=num_warps,
    )
    loss = (partial.sum(dtype=torch.float64) / b).to(acc)
    return loss, grad_real, grad_mixed
