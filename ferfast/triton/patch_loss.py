"""Triton kernel for MAE's reconstruction loss fused with its gradient (``ferfast_triton::masked_patch_mse``).

One program per patch (``BLOCK = next_power_of_2(p*p*C)``): it gathers the target patch from
NCHW in ``nhwpqc`` order by index arithmetic (the patchified target is never materialised),
normalises it when ``norm_pix_loss`` is set (mean and *unbiased* variance, MAE's
``(t-mean)/(var+1e-6)**.5``), and writes the patch's weighted mean squared error to a
per-patch buffer and the un-normalised gradient ``w * (pred - target)`` to ``grad_pred`` (Liger's
fused-CE idea; backward applies ``2 * grad_loss / (P * denom)`` in fp32: folded in here, that
factor, ~7e-8 at ViT-B/16 batch 256, would flush fp16 gradients to zero). Unmasked patches
(``w == 0``) read nothing and write zero gradient. The partials are summed by a deterministic torch ``sum``
in float64 and divided by ``denom = mask.sum()`` (1 when the mask is empty), all on device:
no host synchronisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ferfast.reference.dtypes import acc_dtype
from ferfast.reference.patch_loss import NORM_PIX_EPS
from ferfast.triton.utils import (
    calculate_settings,
    cast_rn,
    check,
    check_dim,
    check_floating,
    check_patch_grid,
    check_same_device,
    define_op,
    launch,
    to_acc,
)

__all__ = ["masked_patch_mse"]


@triton.jit
def _masked_patch_mse_kernel(
    imgs_ptr,
    pred_ptr,
    mask_ptr,
    grad_ptr,
    partial_ptr,
    L,
    C,
    H,
    W,
    p,
    gw,
    P,
    NORM_PIX: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    WIDE: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)  # b * L + l: one patch
    b = r // L
    l = r % L
    w = tl.load(mask_ptr + r)  # already in the accumulation dtype
    e = tl.arange(0, BLOCK)
    in_patch = e < P
    # lanes to read: only masked patches (w != 0) read anything. tl.where rather than `&`:
    # the interpreter stores float comparisons as floats, which `&` rejects.
    live = tl.where(w != 0, in_patch, False)
    # target[e] = imgs[b, c, y0 + i, x0 + j] with e = (i * p + j) * C + c (nhwpqc)
    y0 = (l // gw) * p
    x0 = (l % gw) * p
    c = e % C
    j = (e // C) % p
    i = e // (C * p)
    t = to_acc(tl.load(imgs_ptr + ((b * C + c) * H + y0 + i) * W + x0 + j, mask=live, other=0), WIDE)
    if NORM_PIX:
        mean = tl.sum(t, axis=0) / P
        centred = tl.where(in_patch, t - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / (P - 1)  # unbiased, as torch.var
        eps = tl.full((), EPS, w.dtype)
        if WIDE:
            inv_std = 1.0 / tl.sqrt(var + eps)
        else:
            inv_std = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
        t = centred * inv_std
    x = to_acc(tl.load(pred_ptr + r * P + e, mask=live, other=0), WIDE)
    diff = x - t  # 0 outside the patch and for unmasked patches
    sq = tl.sum(diff * diff, axis=0)
    tl.store(partial_ptr + r, w * sq / P)
    if COMPUTE_GRAD:
        # cast_rn: rounded to nearest under the interpreter too (backward rounds a second time)
        tl.store(grad_ptr + r * P + e, cast_rn(diff * w, grad_ptr.dtype.element_ty), mask=in_patch)


@define_op("ferfast_triton::masked_patch_mse")
def masked_patch_mse(
    imgs: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool, compute_grad: bool
) -> tuple[Tensor, Tensor]:
    gh, gw = check_patch_grid(imgs, patch_size)
    check_dim(pred, 3, "pred")
    check_floating(pred, "pred")
    check_dim(mask, 2, "mask")
    check_floating(mask, "mask")
    check_same_device(imgs, "imgs", pred, "pred")
    check_same_device(imgs, "imgs", mask, "mask")
    b, c = imgs.shape[0], imgs.shape[1]
    length = gh * gw
    pdim = patch_size * patch_size * c
    check(
        tuple(pred.shape) == (b, length, pdim),
        f"pred must have shape [{b}, {length}, {pdim}] for imgs {tuple(imgs.shape)} and patch_size {patch_size}, "
        f"got {tuple(pred.shape)}",
    )
    check(tuple(mask.shape) == (b, length), f"mask must have shape [{b}, {length}], got {tuple(mask.shape)}")
    check(not norm_pix_loss or pdim > 1, "norm_pix_loss needs at least 2 values per patch (unbiased variance)")
    acc = acc_dtype(imgs, pred)
    wide = acc == torch.float64
    imgs = imgs.contiguous()
    pred = pred.contiguous()
    mask = mask.to(acc).contiguous()
    denom = mask.sum(dtype=torch.float64)
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)  # MAE gives 0/0 = NaN here; ferfast gives 0
    grad = torch.empty_like(pred) if compute_grad else pred.new_empty((0,))
    partial = mask.new_empty((b * length,))
    if partial.numel() > 0:
        block, num_warps = calculate_settings(pdim)
        launch(_masked_patch_mse_kernel, (b * length,))(
            imgs,
            pred,
            mask,
            grad,
            partial,
            length,
            c,
            imgs.shape[2],
            imgs.shape[3],
            patch_size,
            gw,
            pdim,
            NORM_PIX=bool(norm_pix_loss),
            COMPUTE_GRAD=bool(compute_grad),
            WIDE=wide,
            EPS=NORM_PIX_EPS,
            BLOCK=block,
            num_warps=num_warps,
        )
    loss = (partial.sum(dtype=torch.float64) / denom).to(acc)
    return loss, grad
