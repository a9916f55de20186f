"""Triton backend: the ``ferfast_triton::*`` ops (same schemas and semantics as the C++ ``ferfast::*`` ops).

Importing this package defines the ops with :func:`torch.library.triton_op` (launches go
through :func:`torch.library.wrap_triton`, so ``torch.compile`` sees the kernels) and
registers their autograd formulas from :mod:`ferfast._library`. ``triton_op`` derives the
fake kernels by tracing the host functions, so :func:`ferfast._registry.register` is
called with ``with_fake=False``.

The kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (set it
before ``triton`` is first imported). Interpreted kernels cannot be traced, so there the
ops are opaque ``custom_op``s with the fake kernels of :mod:`ferfast._library`
(see :func:`ferfast.triton.utils.define_op`).

Every kernel launch goes through :func:`ferfast.triton.utils.launch`, which runs it under
``torch.cuda.device`` of its first tensor argument (Triton launches on the current device, so a
``cuda:1`` tensor would otherwise run on ``cuda:0``). The losses' backward multiply is the Triton
op ``_scale_grad`` (one pass; the C++ backends use torch ops).
"""

from __future__ import annotations

import torch

from ferfast import _registry
from ferfast.triton import boxes, masking, mixup, patch_loss, scale, ssl
from ferfast.triton.boxes import box_iou, paired_box_iou
from ferfast.triton.masking import (
    patchify_gather,
    patchify_gather_backward,
    random_masking,
    unshuffle_tokens,
    unshuffle_tokens_backward,
)
from ferfast.triton.mixup import face_mixup, face_mixup_out, facemix_loss, mixup_soft_targets
from ferfast.triton.patch_loss import masked_patch_mse
from ferfast.triton.scale import scale_grad
from ferfast.triton.ssl import fixmatch_loss
from ferfast.triton.utils import INTERPRETED

__all__ = [
    "box_iou",
    "boxes",
    "face_mixup",
    "face_mixup_out",
    "facemix_loss",
    "fixmatch_loss",
    "masked_patch_mse",
    "masking",
    "mixup",
    "mixup_soft_targets",
    "paired_box_iou",
    "patch_loss",
    "patchify_gather",
    "patchify_gather_backward",
    "random_masking",
    "scale",
    "scale_grad",
    "ssl",
    "unshuffle_tokens",
    "unshuffle_tokens_backward",
]

_registry.register(
    "ferfast_triton",
    {
        "patchify_gather": torch.ops.ferfast_triton._patchify_gather_backward.default,
        "unshuffle_tokens": torch.ops.ferfast_triton._unshuffle_tokens_backward.default,
        "scale_grad": torch.ops.ferfast_triton._scale_grad.default,  # the losses' backward, in one pass
    },
    with_fake=INTERPRETED,
    backend="triton",
)
