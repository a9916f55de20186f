"""The torch/torchvision loader: executes a :class:`~ferfast.data.plan.LoaderPlan` with ``transforms.v2``.

Used where DALI is not installed (DALI is an optional extra). Each worker builds whole batches:
decode (PIL, EXIF orientation applied), crop and resize (bicubic, antialiased) and flip with
``transforms.v2.functional`` on the image and its ``tv_tensors.BoundingBoxes`` together, RandAugment for
the strong view (torchvision's ops with the plan's draws, on the crop before the resize), and stacks the
views as uint8 (normalisation happens on the training device: :func:`ferfast.data.normalize_images`;
``normalize=True`` restores normalised float32 batches). Same batches, crops, flips, RandAugment ops and
boxes as the DALI loader for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ferfast.data.check import SkipCounter, UnreadableImageError, decode_rgb
from ferfast.data.imageio import read_probed
from ferfast.data.normalize import normalize_batch
from ferfast.data.plan import VIEWS, LoaderPlan, PlanLoader
from ferfast.data.rand_augment import apply_rand_augment_torch

__all__ = ["TorchFaceLoader", "decode_rgb_tensor", "load_step"]


def decode_rgb_tensor(data: bytes, name: str) -> torch.Tensor:
    """Decode (PIL, via :func:`ferfast.data.check.decode_rgb`) to a ``[3, H, W]`` uint8 RGB tensor.

    PIL, not ``torchvision.io`` (whose decoders torchvision 0.29 deprecates); grey, CMYK, palette
    and alpha are converted, and a truncated file raises instead of being padded with grey.
    """
    return torch.from_numpy(decode_rgb(data, name)).permute(2, 0, 1)


def _make_strong_view(img: torch.Tensor, window: np.ndarray, flip: bool, size: int, ops, mags) -> torch.Tensor:
    """The strong view: crop, RandAugment at the crop's resolution, resize (bicubic, antialias), flip.

    RandAugment runs before the upscale, as in the DALI pipeline on the CPU (fewer pixels; SSFER
    applies it after the resize); the ops and magnitudes come from the plan, so both loaders agree.
    """
    left, top, width, height = (int(v) for v in window)
    out = apply_rand_augment_torch(F.crop(img, top, left, height, width), ops, mags)
    out = F.resize(out, [size, size], F.InterpolationMode.BICUBIC, antialias=True)
    return F.horizontal_flip(out) if flip else out


def _make_view(
    img: torch.Tensor, box_rel: np.ndarray, window: np.ndarray, flip: bool, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop + resize (bicubic, antialias) + flip of the image and its face box, with transforms.v2."""
    h_img, w_img = img.shape[-2:]
    left, top, width, height = (int(v) for v in window)
    box = tv_tensors.BoundingBoxes(
        torch.as_tensor(box_rel * np.array([w_img, h_img, w_img, h_img]), dtype=torch.float32)[None],
        format="XYXY",
        canvas_size=(h_img, w_img),
    )
    out = F.resized_crop(img, top, left, height, width, [size, size], F.InterpolationMode.BICUBIC, antialias=True)
    box = F.resized_crop(box, top, left, height, width, [size, size])
    if flip:
        out = F.horizontal_flip(out)
        box = F.horizontal_flip(box)
    return out, (box.as_subclass(torch.Tensor)[0] / size).clamp_(0.0, 1.0)


def load_step(
    plan: LoaderPlan, epoch: int, step: int, skipped: SkipCounter, cache: dict | None = None, normalize: bool = False
) -> dict:
    """Build the batch of ``step`` of ``epoch``: every stream's images (uint8), views, labels, boxes and indices.

    ``normalize``: float32 normalised images instead of uint8 (the old format).
    """
    cfg = plan.config
    out: dict[str, torch.Tensor] = {}
    for k, (stream, idx) in enumerate(zip(plan.streams, plan.step_indices(epoch, step, cache))):
        ds = stream.dataset
        images, sizes, used = [], [], []
        for i in idx:
            for _ in range(8):  # a file that probes fine can still fail to decode: skip it too
                j, data, _size = read_probed(ds, int(i), skipped)
                try:
                    img = decode_rgb_tensor(data, str(ds.files[j]))
                    break
                except UnreadableImageError as e:
                    skipped.skip(str(ds.files[j]), str(e))
                    i = (j + 1) % len(ds)
            else:
                raise UnreadableImageError(f"{ds.name}: too many unreadable images near {ds.files[int(idx[0])]}")
            images.append(img)
            sizes.append((img.shape[-1], img.shape[-2]))
            used.append(j)
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        used_arr = np.asarray(used, dtype=np.int64)
        rel = ds.relative_boxes_many(used_arr, sizes_arr)
        for view in stream.views:
            draws = plan.view_draws(epoch, step, k, view, len(idx))
            windows = draws.windows(sizes_arr, cfg)
            flips = draws.flip if draws.flip is not None else np.zeros(len(idx), bool)
            ra = draws.rand_augment(windows, cfg)
            views, boxes = [], []
            for n, img in enumerate(images):
                if ra is not None:  # the strong view (no box: RandAugment's affine ops move the face)
                    views.append(
                        _make_strong_view(img, windows[n], bool(flips[n]), cfg.image_size, ra.ops[n], ra.magnitudes[n])
                    )
                    continue
                v, b = _make_view(img, rel[n], windows[n], bool(flips[n]), cfg.image_size)
                views.append(v)
                boxes.append(b)
            img_key, box_key = VIEWS[view]
            out[img_key] = torch.stack(views)
            if box_key is not None and boxes:
                out[box_key] = torch.stack(boxes)
        out[stream.index_key] = torch.from_numpy(used_arr)
        if stream.with_labels:
            out["labels"] = torch.from_numpy(ds.labels[used_arr])
            if ds.soft_labels is not None:
                out["soft_labels"] = torch.from_numpy(ds.soft_labels[used_arr])
    return normalize_batch(out, cfg.mean, cfg.std) if normalize else out


class _Steps(Dataset):
    """Map-style dataset whose items are whole batches, keyed by ``(epoch, step)`` (built in the worker)."""

    def __init__(self, plan: LoaderPlan, normalize: bool = False) -> None:
        self.plan = plan
        self.normalize = normalize
        self.skipped = SkipCounter(f"images in the torch loader ({plan.stage})")
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, step = key
        return load_step(self.plan, epoch, step, self.skipped, self._cache, self.normalize)


class _StepSampler(Sampler):
    def __init__(self, loader: TorchFaceLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.plan)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.loader.epoch
        return iter([(epoch, s) for s in range(self.loader.start_step, len(self.loader.plan))])


class TorchFaceLoader(PlanLoader):
    """Iterates the batches of a :class:`LoaderPlan` with ``torch.utils.data.DataLoader`` workers.

    Call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``); ``start_step``
    resumes an epoch in the middle (a resumed run sees the remaining batches unchanged).

    Args:
        plan: what to load (see :func:`ferfast.data.build_loader`).
        num_workers: worker processes building whole batches (0: in the calling process).
        pin_memory: return page-locked batches (torch's pin-memory thread pins them off the training
            thread), so ``.to("cuda", non_blocking=True)`` is asynchronous; needs CUDA, ignored without it.
        normalize: float32 normalised images (the old batch format) instead of uint8.
        persistent_workers, prefetch_factor: as in ``torch.utils.data.DataLoader``.
    """

    backend = "torch"

    def __init__(
        self,
        plan: LoaderPlan,
        *,
        num_workers: int = 2,
        pin_memory: bool = False,
        normalize: bool = False,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
    ) -> None:
        if not (isinstance(num_workers, int) and num_workers >= 0):
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        super().__init__(plan)
        self.normalize = bool(normalize)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self._steps = _Steps(plan, self.normalize)
        self._loader = DataLoader(
            self._steps,
            batch_size=None,
            sampler=_StepSampler(self),
            num_workers=num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )

    @property
    def skipped(self) -> int:
        """Images skipped as unreadable in this process (workers warn themselves)."""
        return self._steps.skipped.count

    def __iter__(self) -> Iterator[dict]:
        return iter(self._loader)
