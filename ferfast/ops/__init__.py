"""ferfast's fused ops: the only place that chooses among backends (see ``ferfast.backends``).

Each op is declared once, in :mod:`ferfast._registry` (``docs/ops.md``); ``__all__`` is derived from it.
"""

# ruff: noqa: F401  (the names are exported through the derived __all__)

from ferfast import _extension, _registry
from ferfast._registry import PUBLIC_NAMES
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

#: Derived from the op declarations (:data:`ferfast._registry.SPECS`); ``tests/ops/test_op_specs.py`` checks
#: that every declared name is imported above.
__all__ = sorted({*PUBLIC_NAMES, "set_value_checks", "value_checks"})

if _extension.HAS_OPS:  # the C++ ops' fake kernels and autograd (ferfast::*), once: this package loads once
    _registry.register_native_ops()
