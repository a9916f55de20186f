"""What a loader delivers, independent of how: streams of images, their views, and each step's draws.

A loader is one or two *streams* (stage 2: the labeled set and the unlabeled pool), each a
dataset with its :class:`~ferfast.data.sampling.ShardedBatches` and the *views* made of each image
(``view``: crop + flip; ``weak``/``strong``: FixMatch's pair, strong adds RandAugment;
``eval``: the whole image resized). The epoch length is the first stream's number of batches;
other streams cycle. The torch and the DALI loader both execute a :class:`LoaderPlan`, so they
deliver the same images, labels, crops, flips and boxes for the same seed.

Batch format (a dict of tensors, the engine's one input format):

=================  ======================================================================
``images``         ``[B, 3, S, S]`` **uint8** RGB pixels (the labeled/only stream's view), not
                   normalised: the engine normalises on its device after the copy, with
                   :func:`ferfast.data.normalize_images` (``(x / 255 - mean) / std``, the
                   plan's ``config.mean``/``config.std``). ``normalize=True`` on a loader gives
                   float32 normalised images instead (the old format)
``labels``         ``[B]`` int64 class indices (-1 = no label); ``soft_labels`` ``[B, K]`` when the
                   dataset has them (FERPlus probability mode)
``boxes``          ``[B, 4]`` float32 relative xyxy face boxes in the view's coordinates
``index``          ``[B]`` int64 dataset indices (after any skip of an unreadable image)
``images_weak``,   stage 2's unlabeled views (``[U, 3, S, S]`` uint8, like ``images``),
``images_strong``  ``boxes_weak`` (the strong view has none: RandAugment's shears and
                   rotations move the face) and ``index_unlabeled`` ``[U]``
=================  ======================================================================

Where the tensors live: the torch loader and the DALI loader with ``device="cpu"`` deliver CPU tensors
(page-locked with ``pin_memory=True`` where CUDA is available, so ``.to(device, non_blocking=True)`` is
asynchronous; the engine may do that copy on a side stream). The DALI loader with ``device="gpu"`` delivers
the image keys on the current CUDA device, ready in stream order on the stream that was current when the
batch was drawn (no host synchronisation), everything else on the CPU. Every image is as displayed: its
EXIF orientation applied (sizes, crop windows and boxes too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ferfast.data.augment import AugmentConfig, CropNoise, draw_crop_noise, full_windows, resolve_crop_windows
from ferfast.data.base import FaceDataset
from ferfast.data.rand_augment import RandAugmentDraws, draw_rand_augment
from ferfast.data.sampling import ShardedBatches, batch_rng

__all__ = ["IMAGE_KEYS", "LOADER_STAGES", "VIEWS", "LoaderPlan", "PlanLoader", "Stream", "ViewDraws"]

#: The four uses of a loader.
LOADER_STAGES = ("pretrain", "stage1", "stage2", "eval")
#: The views of an image: output key of its images and boxes.
VIEWS = {
    "view": ("images", "boxes"),
    "eval": ("images", "boxes"),
    "weak": ("images_weak", "boxes_weak"),
    "strong": ("images_strong", None),  # RandAugment's geometric ops move the face: no box is claimed
}
#: The batch keys that hold images (uint8 ``[B, 3, S, S]`` unless a loader was asked to normalise).
IMAGE_KEYS = ("images", "images_weak", "images_strong")


@dataclass
class Stream:
    """One dataset, its batches and the views made of each image; ``index_key`` names its indices."""

    dataset: FaceDataset
    batches: ShardedBatches
    views: tuple[str, ...]
    index_key: str = "index"
    with_labels: bool = True


@dataclass
class ViewDraws:
    """One view's random draws for a batch: crop/flip uniforms, and (strong view) RandAugment's generator."""

    noise: CropNoise | None  # None for the evaluation view (whole image, no flip)
    ra_rng: np.random.Generator | None = None  # the strong view's RandAugment draws come from it

    def rand_augment(self, windows: np.ndarray, config: AugmentConfig) -> RandAugmentDraws | None:
        """RandAugment's ops and magnitudes for crops of ``windows`` (translations in pixels of the crop).

        Both loaders apply them to the crop before it is resized (call once per batch: it draws).
        """
        if self.ra_rng is None or config.rand_augment.num_ops == 0:
            return None
        return draw_rand_augment(self.ra_rng, len(windows), config.rand_augment, np.asarray(windows)[:, 2:4])

    def windows(self, sizes: np.ndarray, config: AugmentConfig) -> np.ndarray:
        """Crop windows (left, top, width, height) for images of ``sizes`` [N, 2] (W, H)."""
        if self.noise is None:
            return full_windows(sizes)
        return resolve_crop_windows(self.noise, sizes, config.scale, config.ratio)

    @property
    def flip(self) -> np.ndarray | None:
        return None if self.noise is None else self.noise.flip


@dataclass
class LoaderPlan:
    """The streams of a loader, its augmentation, seed and shard; the step-by-step draws."""

    stage: str
    streams: list[Stream]
    config: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    rank: int = 0

    def __post_init__(self) -> None:
        if self.stage not in LOADER_STAGES:
            raise ValueError(f"stage must be one of {LOADER_STAGES}, got {self.stage!r}")
        for s in self.streams:
            for v in s.views:
                if v not in VIEWS:
                    raise ValueError(f"unknown view {v!r}; views are {sorted(VIEWS)}")

    def __len__(self) -> int:
        """Steps per epoch (the first stream's batches)."""
        return len(self.streams[0].batches)

    def step_indices(self, epoch: int, step: int, cache: dict | None = None) -> list[np.ndarray]:
        """Each stream's dataset indices at ``step`` of ``epoch``; later streams cycle over their own epochs."""
        out = []
        steps = len(self)
        for k, s in enumerate(self.streams):
            if k == 0:
                key, b = (k, epoch), step
            else:  # cycle: this stream's "epoch" advances every len(its batches) global steps
                global_step = epoch * steps + step
                nb = len(s.batches)
                key, b = (k, global_step // nb), global_step % nb
            batches = None if cache is None else cache.get(key)
            if batches is None:
                batches = s.batches.epoch(key[1])
                if cache is not None:
                    if len(cache) > 8:
                        cache.clear()
                    cache[key] = batches
            out.append(batches[b])
        return out

    def view_draws(self, epoch: int, step: int, stream: int, view: str, n: int) -> ViewDraws:
        """The draws of ``view`` of stream ``stream`` at this step (a pure function of the coordinates)."""
        if view == "eval":
            return ViewDraws(noise=None)
        rng = batch_rng(self.seed, epoch, self.rank, step, stream, view)
        noise = draw_crop_noise(rng, n, self.config.flip_prob)
        ra_rng = batch_rng(self.seed, epoch, self.rank, step, stream, "rand_augment") if view == "strong" else None
        return ViewDraws(noise=noise, ra_rng=ra_rng)


class PlanLoader:
    """What both loaders share: the plan, the epoch and the step to start from (``set_epoch``), the length."""

    backend = "?"

    def __init__(self, plan: LoaderPlan) -> None:
        self.plan = plan
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch (its permutation and draws) and the step to start from (a resumed run)."""
        self.epoch = int(epoch)
        self.start_step = int(start_step)

    def __len__(self) -> int:
        """Steps per epoch."""
        return len(self.plan)
