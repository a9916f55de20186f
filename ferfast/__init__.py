"""ferfast: fast semi-supervised facial-expression recognition (SSFER) on fused kernels.

The public ops live in :mod:`ferfast.ops`; :func:`info` reports what was built and
which backend each device uses; :func:`pretrain`, :func:`finetune`, :func:`evaluate`,
:func:`semisup`, :func:`load_model` and :func:`predict` run the pipeline (:mod:`ferfast.api`);
:class:`TrainConfig` is a run's recipe (:mod:`ferfast.config`), :func:`create_model` builds a model by name
(:mod:`ferfast.models`) and :func:`build_loader` a stage's batches (:mod:`ferfast.data`).

Everything here is imported on first use (PEP 562), so that ``import ferfast`` and the command
line's ``--help`` do not pay for torch, the native library or the data layer until they are used.
Importing :mod:`ferfast.ops` (or anything that dispatches to a backend) loads ``ferfast._C`` and
registers its ops.
"""

from __future__ import annotations

import importlib
from typing import Any

from ferfast._version import __version__ as __version__  # re-exported

#: The ops' public names. ``import ferfast`` stays light, so this cannot be read from the op declarations
#: (:data:`ferfast._registry.PUBLIC_NAMES`, which import torch); ``tests/ops/test_op_specs.py`` holds it equal.
_OPS = (
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
    "unshuffle_tokens",
)
#: public name -> the module that defines it
_HOMES: dict[str, str] = {
    **dict.fromkeys(_OPS, "ferfast.ops"),
    **dict.fromkeys(
        ("available_backends", "default_backend", "resolve_backend", "set_default_backend"), "ferfast.backends"
    ),
    **dict.fromkeys(("evaluate", "finetune", "load_model", "predict", "pretrain", "semisup"), "ferfast.api"),
    "info": "ferfast._info",
    "TrainConfig": "ferfast.config",
    "create_model": "ferfast.models",
    "build_loader": "ferfast.data",
    "tune_cpu_allocator": "ferfast.runtime",
}


__all__ = sorted([*_HOMES, "ops", "__version__"])


def __getattr__(name: str) -> Any:
    if name == "ops":
        return importlib.import_module("ferfast.ops")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ferfast' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
