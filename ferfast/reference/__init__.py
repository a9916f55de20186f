"""Plain-PyTorch reference implementations: the specification of every ferfast op."""

from ferfast.reference.boxes import (
    SSFER_FALLBACK_BOX,
    box_area_ref,
    box_iou_ref,
    paired_box_iou_ref,
    ssfer_paired_iou_loop_ref,
)
from ferfast.reference.dtypes import acc_dtype
from ferfast.reference.masking import (
    num_kept,
    patchify_gather_ref,
    patchify_ref,
    random_masking_ref,
    unpatchify_ref,
    unshuffle_tokens_ref,
)
from ferfast.reference.mixup import (
    face_mixup_ref,
    facemix_loss_ref,
    flip_perm,
    mixup_soft_targets_ref,
    ssfer_mix_batch_,
    ssfer_stage1_loss_ref,
)
from ferfast.reference.patch_loss import (
    NORM_PIX_EPS,
    fused_head_masked_mse_ref,
    masked_patch_mse_ref,
    norm_pix_target_ref,
)
from ferfast.reference.ssl import fixmatch_loss_ref

__all__ = [
    "NORM_PIX_EPS",
    "SSFER_FALLBACK_BOX",
    "acc_dtype",
    "box_area_ref",
    "box_iou_ref",
    "face_mixup_ref",
    "facemix_loss_ref",
    "fixmatch_loss_ref",
    "flip_perm",
    "fused_head_masked_mse_ref",
    "masked_patch_mse_ref",
    "mixup_soft_targets_ref",
    "norm_pix_target_ref",
    "num_kept",
    "paired_box_iou_ref",
    "patchify_gather_ref",
    "patchify_ref",
    "random_masking_ref",
    "ssfer_mix_batch_",
    "ssfer_paired_iou_loop_ref",
    "ssfer_stage1_loss_ref",
    "unpatchify_ref",
    "unshuffle_tokens_ref",
]
