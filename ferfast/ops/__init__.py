"""ferfast's fused ops: the only place that chooses among backends (see ``ferfast.backends``)."""

from ferfast.ops.patch_loss import MaskedPatchMSELoss, fused_head_masked_mse, masked_patch_mse
from ferfast.ops.patchify_gather import patchify_gather
from ferfast.ops.random_masking import random_masking
from ferfast.ops.unshuffle_tokens import unshuffle_tokens

__all__ = [
    "MaskedPatchMSELoss",
    "fused_head_masked_mse",
    "masked_patch_mse",
    "patchify_gather",
    "random_masking",
    "unshuffle_tokens",
]
