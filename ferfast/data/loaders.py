"""``build_loader``: one call for the four uses of a loader, on DALI or torch, sharded by rank.

===========  ===================================================================================
``pretrain`` one view (crop + flip) of each image; boxes carried along
``stage1``   one view, labels and boxes (face-IoU Mixup's input)
``stage2``   the labeled view plus the unlabeled pool's weak and strong (RandAugment) views; an
             epoch is one pass over the unlabeled pool, the labeled set cycles (FixMatch)
``eval``     the whole image resized, dataset order, no augmentation, last batch kept
===========  ===================================================================================

The batch format is described in :mod:`ferfast.data.plan`; both backends deliver it: uint8 images
(normalise them on the training device with :func:`ferfast.data.normalize_images`), labels, boxes and
indices.
"""

from __future__ import annotations

from typing import Any

from ferfast.data.augment import AugmentConfig
from ferfast.data.base import FaceDataset
from ferfast.data.dali_loader import DaliFaceLoader, dali_available
from ferfast.data.plan import LOADER_STAGES, LoaderPlan, Stream
from ferfast.data.sampling import ShardedBatches
from ferfast.data.torch_loader import TorchFaceLoader

__all__ = ["DEVICES", "LOADER_BACKENDS", "build_loader", "make_plan", "resolve_dali_device"]

LOADER_BACKENDS = ("auto", "dali", "torch")
#: Where the DALI loader decodes and augments (``data.dali_device`` in a run's config).
DEVICES = ("auto", "cpu", "gpu")


def resolve_dali_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a DALI ``device`` setting; ``"auto"`` is the GPU when torch sees one."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return device


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_plan(
    stage: str,
    dataset: FaceDataset,
    *,
    unlabeled: FaceDataset | None = None,
    batch_size: int = 64,
    unlabeled_batch_size: int | None = None,
    config: AugmentConfig | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
) -> LoaderPlan:
    """The :class:`LoaderPlan` of a stage (see the module docstring); rank/world size from torch.distributed."""
    if stage not in LOADER_STAGES:
        raise ValueError(f"stage must be one of {LOADER_STAGES}, got {stage!r}")
    if not isinstance(dataset, FaceDataset):
        raise TypeError(f"dataset must be a ferfast.data.FaceDataset, got {type(dataset).__name__}")
    if rank is None or world_size is None:
        r, w = _dist_rank_world()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    training = stage != "eval"
    shuffle = training if shuffle is None else shuffle
    drop_last = training if drop_last is None else drop_last
    common = dict(seed=seed, rank=rank, world_size=world_size)
    if stage == "stage2":
        if unlabeled is None:
            raise ValueError("stage='stage2' needs the unlabeled pool: unlabeled=<FaceDataset>")
        ub = batch_size if unlabeled_batch_size is None else unlabeled_batch_size
        streams = [
            Stream(
                unlabeled,
                ShardedBatches(len(unlabeled), ub, shuffle, drop_last, **common),
                ("weak", "strong"),
                index_key="index_unlabeled",
                with_labels=False,
            ),
            Stream(dataset, ShardedBatches(len(dataset), batch_size, True, True, min_batches=1, **common), ("view",)),
        ]
    else:
        if unlabeled is not None:
            raise ValueError(f"unlabeled= is only for stage='stage2', not {stage!r}")
        view = "eval" if stage == "eval" else "view"
        streams = [
            Stream(
                dataset,
                ShardedBatches(len(dataset), batch_size, shuffle, drop_last, **common),
                (view,),
                with_labels=stage != "pretrain",
            )
        ]
    return LoaderPlan(stage, streams, config or AugmentConfig(), seed=seed, rank=rank)


def build_loader(
    stage: str,
    dataset: FaceDataset,
    *,
    unlabeled: FaceDataset | None = None,
    backend: str = "auto",
    device: str = "auto",
    num_workers: int = 2,
    pin_memory: bool = False,
    normalize: bool = False,
    **plan_kwargs: Any,
) -> DaliFaceLoader | TorchFaceLoader:
    """A loader for ``stage`` (``pretrain``, ``stage1``, ``stage2``, ``eval``) over ``dataset``.

    Args:
        backend: ``"dali"``, ``"torch"`` or ``"auto"`` (DALI when installed, else torch).
        device: where DALI decodes and augments (:data:`DEVICES`): ``"gpu"`` (``mixed`` decoding; images come
            out on the current CUDA device, ready on the stream current when a batch is drawn), ``"cpu"``, or
            ``"auto"`` (the GPU when torch sees one). The torch loader always works on the CPU (move the batch
            with ``.to(device, non_blocking=True)``; ``pin_memory=True`` makes that copy asynchronous), and
            accepts ``"auto"`` and ``"cpu"``.
        num_workers: the torch loader's worker processes (DALI uses threads).
        pin_memory: CPU batches come page-locked (both backends; needs CUDA, ignored without it), for
            ``.to("cuda", non_blocking=True)``. The DALI GPU loader pins its CPU outputs (labels, boxes) anyway.
        normalize: float32 normalised images (``(x / 255 - mean) / std``, the old format) instead of uint8;
            for callers that do not normalise themselves (the engine normalises on its device).
        plan_kwargs: ``batch_size``, ``unlabeled_batch_size``, ``config`` (:class:`AugmentConfig`),
            ``seed``, ``rank``, ``world_size``, ``shuffle``, ``drop_last`` (see :func:`make_plan`).

    Call ``loader.set_epoch(epoch)`` before each epoch; ``len(loader)`` is the steps per epoch.
    """
    if backend not in LOADER_BACKENDS:
        raise ValueError(f"backend must be one of {LOADER_BACKENDS}, got {backend!r}")
    plan = make_plan(stage, dataset, unlabeled=unlabeled, **plan_kwargs)
    if backend == "auto":
        backend = "dali" if dali_available() else "torch"
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if backend == "dali":
        sizes = {s.batches.batch_size for s in plan.streams}
        if len(sizes) > 1:
            raise ValueError(f"the DALI loader needs equal labeled and unlabeled batch sizes, got {sorted(sizes)}")
        return DaliFaceLoader(plan, device=resolve_dali_device(device), pin_memory=pin_memory, normalize=normalize)
    if device == "gpu":
        raise ValueError("the torch loader decodes on the CPU; use device='cpu' or 'auto' (or backend='dali')")
    return TorchFaceLoader(plan, num_workers=num_workers, pin_memory=pin_memory, normalize=normalize)
