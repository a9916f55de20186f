"""``random_masking``: MAE's per-sample random masking, fused (sort, keep, mask, restore)."""

from __future__ import annotations

from torch import Tensor

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch

__all__ = ["random_masking"]


def random_masking(noise: Tensor, mask_ratio: float, *, backend: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Order each row's patches by ``noise`` and keep the first ``int(L*(1-mask_ratio))``.

    Args:
        noise: ``[B, L]`` floating tensor, e.g. ``torch.rand(B, L)``; randomness stays with the caller.
        mask_ratio: fraction of patches removed, in ``[0, 1)``.
        backend: ``None`` (global choice), ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``ids_keep`` [B, K] int64, ``mask`` [B, L] in ``noise.dtype`` (1 = removed), ``ids_restore`` [B, L] int64,
        exactly MAE's, with ties in ``noise`` broken by patch index (identical on every backend).
    """
    noise = _checks.tensor(noise, "noise")
    _checks.ndim(noise, 2, "noise", "[B, L]")
    _checks.floating(noise, "noise")
    mask_ratio = _checks.mask_ratio(mask_ratio)
    return dispatch("random_masking", resolve_backend(noise.device, backend))(noise, mask_ratio)
