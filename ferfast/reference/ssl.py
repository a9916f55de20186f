"""Plain-PyTorch specification of the semi-supervised (FixMatch) loss of SSFER's stage 2.

FixMatch (Sohn et al. 2020) as SSFER's ``fine-tune.py`` runs it: the EMA teacher's
logits on the weak view give pseudo-labels ``argmax(softmax(weak))`` and a confidence
mask ``max softmax >= threshold``; the student's logits on the strong view get the
masked cross-entropy, averaged over the whole unlabeled batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ferfast.reference.dtypes import acc_dtype

__all__ = ["fixmatch_loss_ref"]


def fixmatch_loss_ref(
    logits_weak: Tensor, logits_strong: Tensor, threshold: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``mean_i mask_i * CE(strong_i, argmax(weak_i))`` with ``mask_i = max softmax(weak_i) >= threshold``.

    ``logits_weak`` ``[B, K]`` (the teacher's, weak view; no gradient), ``logits_strong`` ``[B, K]``
    (the student's, strong view). Pseudo-labels take the first index of the largest logit. Returns
    ``(loss, mask_rate, pseudo_labels [B] int64, mask [B])``; loss, mask and mask rate are float32
    (float64 for float64 logits).
    """
    acc = acc_dtype(logits_weak, logits_strong)
    probs = torch.softmax(logits_weak.detach().to(acc), dim=-1)
    pseudo_labels = torch.argmax(logits_weak.detach().to(acc), dim=-1)
    max_probs = probs.gather(1, pseudo_labels[:, None]).squeeze(1)
    mask = (max_probs >= threshold).to(acc)
    loss = (F.cross_entropy(logits_strong.to(acc), pseudo_labels, reduction="none") * mask).mean()
    return loss, mask.mean(), pseudo_labels, mask
