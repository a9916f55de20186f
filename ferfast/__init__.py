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
    "evaluate",
    "face_mixup",
    "facemix_loss",
    "finetune",
    "fixmatch_loss",
    "fused_head_masked_mse",
    "info",
    "load_model",
    "masked_patch_mse",
    "mixup_soft_targets",
    "ops",
    "paired_box_iou",
    "patchify_gather",
    "pretrain",
    "random_masking",
    "resolve_backend",
    "set_default_backend",
    "tune_cpu_allocator",
    "unshuffle_tokens",
]

#: The pipeline's entry points, imported on first use so that ``import ferfast`` stays light
#: (the data layer pulls in torchvision, OpenCV and, when installed, DALI).
_API = ("evaluate", "finetune", "load_model", "predict", "pretrain")


def __getattr__(name: str):
    if name in _API:
        from ferfast import api

        return getattr(api, name)
    raise AttributeError(f"module 'ferfast' has no attribute {name!r}")
