"""MAE's reconstruction loss, fused: ``masked_patch_mse`` and ``fused_head_masked_mse``.

Both compute the gradient during the forward pass (Liger's fused linear cross-entropy
idea): the loss reads the images and predictions once, writes ``grad_pred`` once and
never materialises the patchified target. The stored gradient is un-normalised
(``mask * (pred - target)``); backward applies ``2 * grad_loss / (P * denom)`` in fp32
(:func:`ferfast._library.scale_grad`), so fp16 gradients under a loss scaler neither
flush to zero nor overflow.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferfast._library import scale_grad
from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch
from ferfast.reference.dtypes import acc_dtype
from ferfast.reference.patch_loss import norm_pix_target_ref

__all__ = ["MaskedPatchMSELoss", "fused_head_masked_mse", "masked_patch_mse"]


def _check_loss_args(imgs: Any, pred: Any, mask: Any, patch_size: Any, pred_name: str = "pred") -> tuple:
    imgs = _checks.tensor(imgs, "imgs")
    pred = _checks.tensor(pred, pred_name)
    mask = _checks.tensor(mask, "mask")
    patch_size = _checks.positive_int(patch_size, "patch_size")
    gh, gw = _checks.patch_grid(imgs, patch_size)
    _checks.ndim(mask, 2, "mask", "[B, L]")
    _checks.same_device(pred, pred_name, imgs, "imgs")
    _checks.same_device(mask, "mask", imgs, "imgs")
    b, length = imgs.shape[0], gh * gw
    if tuple(mask.shape) != (b, length):
        raise ValueError(f"mask must have shape [{b}, {length}] for imgs {tuple(imgs.shape)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        mask = mask.to(torch.float32)
    _checks.floating(mask, "mask")
    return imgs, pred, mask, patch_size, length


def masked_patch_mse(
    imgs: Tensor,
    pred: Tensor,
    mask: Tensor,
    patch_size: int,
    norm_pix_loss: bool = False,
    *,
    backend: str | None = None,
) -> Tensor:
    """MAE's ``forward_loss``: per-patch MSE between ``pred`` and the patchified ``imgs``,
    averaged over the masked patches of the whole batch.

    Args:
        imgs: ``[B, C, H, W]`` floating images, the target (receives no gradient).
        pred: ``[B, L, p*p*C]`` reconstruction in MAE's ``nhwpqc`` patch order.
        mask: ``[B, L]``, 1 = removed patch (float weights or bool).
        patch_size: ``p``; H and W must be divisible by it.
        norm_pix_loss: normalise each target patch by its mean and unbiased variance (MAE's flag).

    Returns:
        The loss as a float32 scalar (float64 if an input is float64); 0 when the mask is empty,
        where MAE gives NaN.
    """
    imgs, pred, mask, patch_size, length = _check_loss_args(imgs, pred, mask, patch_size)
    _checks.ndim(pred, 3, "pred", "[B, L, p*p*C]")
    _checks.floating(pred, "pred")
    expected = (imgs.shape[0], length, patch_size * patch_size * imgs.shape[1])
    if tuple(pred.shape) != expected:
        raise ValueError(f"pred must have shape {list(expected)} for imgs {tuple(imgs.shape)}, got {tuple(pred.shape)}")
    if norm_pix_loss and expected[2] < 2:
        raise ValueError("norm_pix_loss needs at least 2 values per patch (unbiased variance)")
    op = dispatch("masked_patch_mse", resolve_backend(imgs.device, backend))
    compute_grad = torch.is_grad_enabled() and pred.requires_grad
    loss, _ = op(imgs.detach(), pred, mask.detach(), patch_size, bool(norm_pix_loss), compute_grad)
    return loss


class MaskedPatchMSELoss(nn.Module):
    """Module form of :func:`masked_patch_mse` (``loss = criterion(imgs, pred, mask)``)."""

    def __init__(self, patch_size: int, norm_pix_loss: bool = False, backend: str | None = None) -> None:
        super().__init__()
        self.patch_size = _checks.positive_int(patch_size, "patch_size")
        self.norm_pix_loss = bool(norm_pix_loss)
        self.backend = backend

    def forward(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        return masked_patch_mse(imgs, pred, mask, self.patch_size, self.norm_pix_loss, backend=self.backend)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, norm_pix_loss={self.norm_pix_loss}"


def _patch_rows(imgs: Tensor, rows: Tensor, length: int, patch_size: int) -> Tensor:
    """Target patches ``[N, p*p*C]`` (nhwpqc) for flat patch indices ``rows`` = b*L + l."""
    b, c, h, w = imgs.shape
    p, gw = patch_size, w // patch_size
    grid = imgs.reshape(b, c, h // p, p, gw, p)
    bi, li = rows // length, rows % length
    patches = grid[bi, :, li // gw, :, li % gw, :]  # [N, C, p, p]
    return patches.permute(0, 2, 3, 1).reshape(rows.shape[0], p * p * c)


class FusedHeadMaskedMSEFunction(torch.autograd.Function):
    """Decoder head + masked MSE over masked tokens only, chunk by chunk; gradients in forward.

    The saved gradients are un-normalised (``grad_pred = w * (pred - target)``, ``grad_h = grad_pred @ W``):
    ``2 / (P * denom)`` (~7e-8 at ViT-B/16 batch 256) is applied with ``grad_loss`` in fp32 in backward.
    ``grad_h`` is kept in ``h``'s dtype, the small ``grad_w``/``grad_b`` in the accumulation dtype.
    """

    @staticmethod
    def forward(ctx: Any, h, weight, bias, imgs, mask, patch_size, norm_pix_loss, chunk_size, num_masked):  # type: ignore[override]
        b, length, dim = h.shape
        pdim = weight.shape[0]
        acc = acc_dtype(h, weight, imgs)
        flat_h = h.reshape(b * length, dim)
        flat_mask = mask.reshape(-1)
        rows_all = _masked_rows(mask, num_masked)
        denom = flat_mask.sum().to(acc)
        denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_h = torch.zeros_like(flat_h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if needs_grad else None
        grad_b = torch.zeros(pdim, dtype=acc, device=h.device) if needs_grad else None
        loss = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, rows_all.shape[0], chunk_size):
            rows = rows_all[start : start + chunk_size]
            hc = flat_h.index_select(0, rows)
            pred = F.linear(hc, weight, bias).to(acc)
            target = _patch_rows(imgs, rows, length, patch_size).to(acc)
            if norm_pix_loss:
                target = norm_pix_target_ref(target)
            diff = pred - target
            weights = flat_mask.index_select(0, rows).to(acc)
            loss += (diff.square().mean(dim=-1) * weights).sum()
            if needs_grad:
                grad_pred = diff * weights.unsqueeze(1)  # un-normalised: see the class docstring
                if grad_h is not None:
                    grad_h.index_copy_(0, rows, (grad_pred.to(weight.dtype) @ weight).to(h.dtype))
                grad_w += grad_pred.t() @ hc.to(acc)
                grad_b += grad_pred.sum(dim=0)
        ctx.save_for_backward(
            grad_h.reshape(b, length, dim) if grad_h is not None else None,
            grad_w,
            grad_b if bias is not None else None,
            denom,
        )
        ctx.pdim = pdim
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return loss / denom

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor):  # type: ignore[override]
        grad_h, grad_w, grad_b, denom = ctx.saved_tensors
        factor = 2.0 / ctx.pdim

        def scale(g: Tensor | None, dtype: torch.dtype | None = None) -> Tensor | None:
            if g is None:
                return None
            out = scale_grad(g, grad_loss, factor, denom)
            return out if dtype is None else out.to(dtype)

        return (
            scale(grad_h) if ctx.needs_input_grad[0] else None,
            scale(grad_w, ctx.weight_dtype) if ctx.needs_input_grad[1] else None,
            scale(grad_b, ctx.bias_dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _masked_rows(mask: Tensor, num_masked: int | None) -> Tensor:
    """Flat indices ``b*L + l`` of the masked tokens, row by row in ascending ``l``.

    Without ``num_masked`` this is ``nonzero`` (its size depends on the values: a host synchronisation). With it
    (every row has exactly that many nonzero entries, as MAE's masking guarantees) the size is known, and a stable
    descending sort of ``mask != 0`` finds the same indices on the device.
    """
    b, length = mask.shape
    if num_masked is None:
        return mask.reshape(-1).nonzero().squeeze(1)
    order = torch.argsort((mask != 0).to(torch.uint8), dim=1, descending=True, stable=True)[:, :num_masked]
    return (order + torch.arange(b, device=mask.device).unsqueeze(1) * length).reshape(-1)


def fused_head_masked_mse(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    imgs: Tensor,
    mask: Tensor,
    patch_size: int,
    norm_pix_loss: bool = False,
    *,
    chunk_size: int = 4096,
    num_masked: int | None = None,
    validate: bool | None = None,
) -> Tensor:
    """MAE's ``decoder_pred`` linear head + :func:`masked_patch_mse`, run on masked tokens only.

    ``h`` [B, L, D] are decoder tokens (cls token removed), ``weight`` [p*p*C, D], ``bias`` [p*p*C].
    The prediction is computed ``chunk_size`` masked tokens at a time and never materialised
    whole; the 25% visible tokens skip the head entirely. Gradients for ``h``, ``weight`` and
    ``bias`` are computed in forward. Equal to ``masked_patch_mse(imgs, F.linear(h, weight, bias), ...)``.
    Finding the masked tokens (``nonzero``) synchronises a GPU once per call, unless ``num_masked`` says how many
    nonzero entries every row of ``mask`` has (MAE's ``L - int(L * (1 - mask_ratio))``): then nothing is read on
    the host. ``validate`` checks that count (``None``: on CPU tensors only; a GPU check synchronises). Math runs
    in fp32 (fp64 when an input is fp64); the loss dtype follows :func:`masked_patch_mse`.
    """
    h = _checks.tensor(h, "h")
    weight = _checks.tensor(weight, "weight")
    imgs, _, mask, patch_size, length = _check_loss_args(imgs, h, mask, patch_size, pred_name="h")
    chunk_size = _checks.positive_int(chunk_size, "chunk_size")
    _checks.ndim(h, 3, "h", "[B, L, D]")
    _checks.floating(h, "h")
    _checks.ndim(weight, 2, "weight", "[p*p*C, D]")
    pdim = patch_size * patch_size * imgs.shape[1]
    if tuple(h.shape[:2]) != (imgs.shape[0], length):
        raise ValueError(f"h must have shape [{imgs.shape[0]}, {length}, D], got {tuple(h.shape)}")
    if tuple(weight.shape) != (pdim, h.shape[2]):
        raise ValueError(f"weight must have shape [{pdim}, {h.shape[2]}], got {tuple(weight.shape)}")
    _checks.same_device(weight, "weight", h, "h")
    _checks.floating(weight, "weight")
    if bias is not None:
        bias = _checks.tensor(bias, "bias")
        _checks.same_device(bias, "bias", h, "h")
        if tuple(bias.shape) != (pdim,):
            raise ValueError(f"bias must have shape [{pdim}], got {tuple(bias.shape)}")
    if norm_pix_loss and pdim < 2:
        raise ValueError("norm_pix_loss needs at least 2 values per patch (unbiased variance)")
    if num_masked is not None:
        num_masked = _checks.non_negative_int(num_masked, "num_masked")
        if num_masked > length:
            raise ValueError(f"num_masked must be <= L = {length}, got {num_masked}")
        if _checks.values_checked(validate, mask):
            counts = (mask != 0).sum(dim=1)
            if not bool((counts == num_masked).all()):
                raise ValueError(
                    f"every row of mask must have num_masked = {num_masked} nonzero entries, "
                    f"got {sorted(set(counts.tolist()))}"
                )
    return FusedHeadMaskedMSEFunction.apply(
        h, weight, bias, imgs.detach(), mask.detach(), patch_size, bool(norm_pix_loss), chunk_size, num_masked
    )
