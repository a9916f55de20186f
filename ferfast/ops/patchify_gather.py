"""``patchify_gather``: cut the visible patches straight out of the images (MAE ``nhwpqc`` order)."""

from __future__ import annotations

from torch import Tensor

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch

__all__ = ["patchify_gather"]


def patchify_gather(imgs: Tensor, ids_keep: Tensor, patch_size: int, *, backend: str | None = None) -> Tensor:
    """Visible patches ``[B, K, p*p*C]`` of ``imgs`` [B, C, H, W]: ``patchify`` + MAE's keep-gather in one pass.

    The patch embedding can then run on visible patches only. Differentiable in ``imgs``
    (the backward scatters the patch gradients back; patches not kept get zero).
    """
    imgs = _checks.tensor(imgs, "imgs")
    ids_keep = _checks.tensor(ids_keep, "ids_keep")
    patch_size = _checks.positive_int(patch_size, "patch_size")
    _checks.patch_grid(imgs, patch_size)
    _checks.ndim(ids_keep, 2, "ids_keep", "[B, K]")
    _checks.index(ids_keep, "ids_keep")
    _checks.batch(ids_keep, "ids_keep", imgs, "imgs")
    _checks.same_device(ids_keep, "ids_keep", imgs, "imgs")
    return dispatch("patchify_gather", resolve_backend(imgs.device, backend))(imgs, ids_keep, patch_size)
