"""``patchify_gather``: cut the visible patches straight out of the images (MAE ``nhwpqc`` order)."""

from __future__ import annotations

from torch import Tensor

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch

__all__ = ["patchify_gather"]


def patchify_gather(
    imgs: Tensor, ids_keep: Tensor, patch_size: int, *, backend: str | None = None, validate: bool | None = None
) -> Tensor:
    """Visible patches ``[B, K, p*p*C]`` of ``imgs`` [B, C, H, W]: ``patchify`` + MAE's keep-gather in one pass.

    The patch embedding can then run on visible patches only. Differentiable in ``imgs``
    (the backward scatters the patch gradients back; patches not kept get zero).

    Args:
        validate: check that ``ids_keep`` holds patch indices in ``[0, L)`` (``None``: on CPU tensors only; a
            GPU check synchronises). The ``cpu`` backend's kernels check as they read.
    """
    imgs = _checks.tensor(imgs, "imgs")
    ids_keep = _checks.tensor(ids_keep, "ids_keep")
    patch_size = _checks.positive_int(patch_size, "patch_size")
    gh, gw = _checks.patch_grid(imgs, patch_size)
    _checks.ndim(ids_keep, 2, "ids_keep", "[B, K]")
    _checks.index(ids_keep, "ids_keep")
    _checks.batch(ids_keep, "ids_keep", imgs, "imgs")
    _checks.same_device(ids_keep, "ids_keep", imgs, "imgs")
    chosen = resolve_backend(imgs.device, backend)
    if _checks.values_checked(validate, ids_keep, backend=chosen):
        _checks.index_range(ids_keep, gh * gw, "ids_keep", "patch indices")
    return dispatch("patchify_gather", chosen)(imgs, ids_keep, patch_size)
