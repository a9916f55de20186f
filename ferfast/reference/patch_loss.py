"""Plain-PyTorch specification of MAE's reconstruction loss.

Transcribed from facebookresearch/mae ``models_mae.py:forward_loss`` (and its
``decoder_pred`` head for :func:`fused_head_masked_mse_ref`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ferfast.reference.masking import patchify_ref

__all__ = ["NORM_PIX_EPS", "fused_head_masked_mse_ref", "masked_patch_mse_ref", "norm_pix_target_ref"]

#: MAE's ``(var + 1.e-6)**.5`` constant.
NORM_PIX_EPS = 1e-6


def norm_pix_target_ref(target: Tensor) -> Tensor:
    """MAE's ``norm_pix_loss`` target: each patch (last dim) minus its mean, over
    ``(var + 1e-6)**.5`` with the *unbiased* variance (``models_mae.py:forward_loss``)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + NORM_PIX_EPS) ** 0.5


def masked_patch_mse_ref(
    imgs: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool = False
) -> Tensor:
    """MAE's ``forward_loss``: MSE per patch, averaged over masked patches of the whole batch.

    ``imgs`` [B,C,H,W] is the target (no gradient flows into it in ferfast's
    ops), ``pred`` [B,L,p*p*C] in ``nhwpqc`` order, ``mask`` [B,L] with 1 = removed
    (any non-negative weights work). With ``norm_pix_loss`` each target patch is
    normalised by its mean and *unbiased* variance: ``(t-mean)/(var+1e-6)**.5``.

    One deliberate difference from MAE: when ``mask.sum() == 0`` (mask_ratio 0)
    MAE returns 0/0 = NaN; ferfast returns 0 (and zero gradients).
    """
    target = patchify_ref(imgs, patch_size)
    if norm_pix_loss:
        target = norm_pix_target_ref(target)
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    denom = mask.sum()
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)
    return (loss * mask).sum() / denom


def fused_head_masked_mse_ref(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    imgs: Tensor,
    mask: Tensor,
    patch_size: int,
    norm_pix_loss: bool = False,
) -> Tensor:
    """MAE's ``decoder_pred`` linear head followed by :func:`masked_patch_mse_ref`.

    ``h`` [B,L,D] are decoder tokens without the cls token, ``weight`` [p*p*C, D].
    """
    pred = F.linear(h, weight, bias)
    return masked_patch_mse_ref(imgs, pred, mask, patch_size, norm_pix_loss)
