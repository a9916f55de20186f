"""Feeding the device: batches copied ahead of time and normalised where they are used.

The loaders deliver uint8 images (a quarter of fp32's bytes), page-locked when built with ``pin_memory=True``.
:class:`DevicePrefetcher` wraps a loader and yields its batches on the training device with every ``images*``
tensor normalised by :func:`~ferfast.data.normalize.normalize_images` (``(x / 255 - mean) / std`` as fp32;
float images, already normalised, pass through):

- on CUDA, batch ``i + 1`` is copied on a side stream (``non_blocking=True``: a DMA from pinned memory that runs
  while batch ``i`` trains) and normalised there; the compute stream waits for the side stream before it uses the
  batch (``wait_stream``), and every tensor of the batch is marked as used by the compute stream
  (``record_stream``) so that the caching allocator does not hand its memory to the next copy while the step still
  reads it. Nothing here waits on the host: the host only enqueues work.
- on the CPU, each batch is normalised when it is taken (no streams, nothing to overlap).

Batches the loader already put on the device (DALI's GPU pipelines) are only normalised, on the compute stream:
the loader's hand-off must leave them ready for that stream (ordered after DALI's own stream).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ferfast.data.augment import FACE_MEAN, FACE_STD
from ferfast.data.normalize import is_image_key, normalize_batch
from ferfast.engine.steps import to_device

__all__ = ["DevicePrefetcher", "is_image_key", "prepare_batch"]


def prepare_batch(
    batch: Mapping[str, Any],
    device: torch.device | str,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
) -> dict[str, Any]:
    """``batch`` on ``device`` with its uint8 images normalised (float images, already normalised, pass through).

    One call, synchronous on the CPU; on CUDA the copies are asynchronous when the batch is pinned.
    """
    return normalize_batch(to_device(batch, torch.device(device)), mean, std)


class DevicePrefetcher:
    """Iterate ``loader``'s batches on ``device``, normalised; on CUDA the next batch's copy overlaps this step.

    ``loader`` has ``len()`` and ``set_epoch(epoch)`` (both forwarded) and yields dicts of tensors. ``mean`` and
    ``std`` are the loaders' normalisation (:class:`~ferfast.data.augment.AugmentConfig`'s). For the copy to be
    asynchronous the loader's batches must be page-locked (``build_loader(..., pin_memory=True)``); pageable
    batches still work, with copies that the host waits for.
    """

    def __init__(
        self,
        loader: Any,
        device: torch.device | str,
        mean: Sequence[float] = FACE_MEAN,
        std: Sequence[float] = FACE_STD,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"DevicePrefetcher: device {self.device} asked for, but torch sees no CUDA GPU")
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel each, got {mean!r} and {std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the loader (its draws depend on the epoch)."""
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type == "cuda":
            return self._cuda_batches()
        return (prepare_batch(batch, self.device, self.mean, self.std) for batch in self.loader)

    def _cuda_batches(self) -> Iterator[dict[str, Any]]:
        """The side-stream pipeline: copy and normalise batch i + 1 on ``stream`` while batch i trains."""
        device = self.device
        stream = torch.cuda.Stream(device=device)
        batches = iter(self.loader)

        def preload() -> dict[str, Any] | None:
            try:
                batch = next(batches)
            except StopIteration:
                return None
            if any(isinstance(v, Tensor) and v.is_cuda for v in batch.values()):
                # already on the GPU (DALI), ready on the compute stream: nothing to overlap, normalise there
                return prepare_batch(batch, device, self.mean, self.std)
            with torch.cuda.stream(stream):  # copies and normalisation queue on the side stream
                return prepare_batch(batch, device, self.mean, self.std)

        upcoming = preload()
        while upcoming is not None:
            compute = torch.cuda.current_stream(device)
            compute.wait_stream(stream)  # the batch is ready before the step's first kernel reads it
            batch = upcoming
            for value in batch.values():
                if isinstance(value, Tensor) and value.device.type == "cuda":
                    value.record_stream(compute)  # its memory is not reused until the compute stream is done
            upcoming = preload()  # the next copy starts now, behind nothing on the compute stream
            yield batch
