"""Plain-PyTorch specification of MAE's masking and token shuffling.

Transcribed from facebookresearch/mae ``models_mae.py`` (``random_masking``,
``patchify``, ``forward_encoder``, ``forward_decoder``). Every ferfast backend
is tested against these functions; keep them readable, not fast.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "num_kept",
    "patchify_gather_ref",
    "patchify_ref",
    "random_masking_ref",
    "unpatchify_ref",
    "unshuffle_tokens_ref",
]


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches per row: MAE's ``int(L * (1 - mask_ratio))``."""
    return int(num_patches * (1 - mask_ratio))


def patchify_ref(imgs: Tensor, patch_size: int) -> Tensor:
    """``[B,C,H,W] -> [B,L,p*p*C]`` in MAE's ``nchpwq->nhwpqc`` order (``models_mae.py:patchify``).

    MAE hard-codes 3 channels and square images; this version takes any C, H, W
    divisible by the patch.
    """
    b, c, h, w = imgs.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = imgs.reshape(b, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify_ref(x: Tensor, patch_size: int, channels: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`patchify_ref` (``models_mae.py:unpatchify``)."""
    b = x.shape[0]
    p = patch_size
    gh, gw = height // p, width // p
    x = x.reshape(b, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, gh * p, gw * p)


def random_masking_ref(noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking, driven by caller-supplied ``noise`` [B, L].

    ``models_mae.py:random_masking``: patches are ordered by ascending noise, the
    first ``K = int(L*(1-mask_ratio))`` are kept. Ties are broken by patch index
    (a *stable* argsort; MAE's plain argsort leaves tie order unspecified), and
    ``-0.0`` equals ``+0.0``. Returns ``ids_keep`` [B,K] int64, ``mask`` [B,L]
    in ``noise.dtype`` (1 = removed) and ``ids_restore`` [B,L] int64.
    """
    _, length = noise.shape
    len_keep = num_kept(length, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones_like(noise)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, mask, ids_restore


def patchify_gather_ref(imgs: Tensor, ids_keep: Tensor, patch_size: int) -> Tensor:
    """Visible patches ``[B,K,p*p*C]`` of ``imgs``: ``patchify`` then MAE's keep-gather.

    MAE gathers embedded tokens (``x_masked = gather(x, 1, ids_keep)``); gathering
    the raw patches first lets the patch embedding run on visible patches only.
    """
    x = patchify_ref(imgs, patch_size)
    index = ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, dim=1, index=index)


def unshuffle_tokens_ref(x: Tensor, mask_token: Tensor, ids_restore: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """MAE decoder input: append mask tokens to the visible tokens and unshuffle.

    ``models_mae.py:forward_decoder``: ``x`` is ``[B, num_prefix_tokens + K, D]``
    (prefix = the cls token), ``mask_token`` has ``D`` elements, ``ids_restore``
    is ``[B, L]``. Output ``[B, num_prefix_tokens + L, D]`` where token ``l`` is
    visible token ``ids_restore[l]`` if that index is ``< K``, else the mask token.
    """
    b, _, d = x.shape
    length = ids_restore.shape[1]
    prefix, visible = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    mask_tokens = mask_token.reshape(1, 1, d).to(x.dtype).expand(b, length - visible.shape[1], d)
    x_ = torch.cat([visible, mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).expand(-1, -1, d))
    return torch.cat([prefix, x_], dim=1)
