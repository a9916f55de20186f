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
    MaskedPatchMSELoss,
    fused_head_masked_mse,
    masked_patch_mse,
    patchify_gather,
    random_masking,
    unshuffle_tokens,
)

__all__ = [
    "MaskedPatchMSELoss",
    "__version__",
    "available_backends",
    "default_backend",
    "fused_head_masked_mse",
    "info",
    "masked_patch_mse",
    "ops",
    "patchify_gather",
    "random_masking",
    "resolve_backend",
    "set_default_backend",
    "tune_cpu_allocator",
    "unshuffle_tokens",
]
