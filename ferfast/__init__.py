"""ferfast: fast semi-supervised facial-expression recognition (SSFER) on fused kernels.

The public ops live in :mod:`ferfast.ops`; :func:`info` reports what was built and
which backend each device uses.
"""

from __future__ import annotations

from ferfast import _extension
from ferfast._version import __version__

if _extension.HAS_OPS:
    from ferfast import _library

    _library.register_native_ops()

from ferfast import ops
from ferfast._info import info
from ferfast.backends import available_backends, default_backend, resolve_backend, set_default_backend
from ferfast.ops import (
    FaceIoUMixup,
    FaceMixBatch,
    FaceMixLoss,
    FixMatchLoss,
    MaskedPatchMSELoss,
    box_iou,
    face_mixup,
    facemix_loss,
    fixmatch_loss,
    fused_head_masked_mse,
    masked_patch_mse,
    mixup_soft_targets,
    paired_box_iou,
    patchify_gather,
    random_masking,
    unshuffle_tokens,
)
from ferfast.runtime import tune_cpu_allocator

__all__ = [
    "FaceIoUMixup",
    "FaceMixBatch",
    "FaceMixLoss",
    "FixMatchLoss",
    "MaskedPatchMSELoss",
    "__version__",
    "available_backends",
    "box_iou",
    "default_backend",
    "face_mixup",
    "facemix_loss",
    "fixmatch_loss",
    "fused_head_masked_mse",
    "info",
    "masked_patch_mse",
    "mixup_soft_targets",
    "ops",
    "paired_box_iou",
    "patchify_gather",
    "random_masking",
    "resolve_backend",
    "set_default_backend",
    "tune_cpu_allocator",
    "unshuffle_tokens",
]
