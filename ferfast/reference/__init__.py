"""Plain-PyTorch reference implementations: the specification of every ferfast op."""

from ferfast.reference.masking import (
    num_kept,
    patchify_gather_ref,
    patchify_ref,
    random_masking_ref,
    unpatchify_ref,
    unshuffle_tokens_ref,
)
from ferfast.reference.patch_loss import (
    NORM_PIX_EPS,
    fused_head_masked_mse_ref,
    masked_patch_mse_ref,
    norm_pix_target_ref,
)

__all__ = [
    "NORM_PIX_EPS",
    "fused_head_masked_mse_ref",
    "masked_patch_mse_ref",
    "norm_pix_target_ref",
    "num_kept",
    "patchify_gather_ref",
    "patchify_ref",
    "random_masking_ref",
    "unpatchify_ref",
    "unshuffle_tokens_ref",
]
