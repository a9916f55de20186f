"""ferfast's fused ops: the only place that chooses among backends (see ``ferfast.backends``)."""

from ferfast.ops._checks import set_value_checks, value_checks
from ferfast.ops.box_iou import box_iou, paired_box_iou
from ferfast.ops.face_iou_mixup import FaceIoUMixup, FaceMixBatch
from ferfast.ops.face_mixup import face_mixup, mixup_soft_targets
from ferfast.ops.facemix_loss import FaceMixLoss, facemix_loss
from ferfast.ops.fixmatch import FixMatchLoss, fixmatch_loss
from ferfast.ops.patch_loss import MaskedPatchMSELoss, fused_head_masked_mse, masked_patch_mse
from ferfast.ops.patchify_gather import patchify_gather
from ferfast.ops.random_masking import random_masking
from ferfast.ops.unshuffle_tokens import unshuffle_tokens

__all__ = [
    "FaceIoUMixup",
    "FaceMixBatch",
    "FaceMixLoss",
    "FixMatchLoss",
    "MaskedPatchMSELoss",
    "box_iou",
    "face_mixup",
    "facemix_loss",
    "fixmatch_loss",
    "fused_head_masked_mse",
    "masked_patch_mse",
    "mixup_soft_targets",
    "paired_box_iou",
    "patchify_gather",
    "random_masking",
    "set_value_checks",
    "unshuffle_tokens",
    "value_checks",
]
