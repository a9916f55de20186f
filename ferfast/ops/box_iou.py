"""Face-box IoU for face-IoU Mixup: pairwise ``box_iou`` and per-pair ``paired_box_iou``."""

from __future__ import annotations

import torch
from torch import Tensor

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch
from ferfast.reference.mixup import flip_perm

__all__ = ["box_iou", "paired_box_iou"]


def _check_boxes(boxes: object, name: str) -> Tensor:
    boxes = _checks.tensor(boxes, name)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        boxes = boxes.float()  # integer pixel boxes (SSFER rounds its boxes to ints)
    return boxes.detach()


def _check_box_values(boxes: Tensor, name: str) -> None:
    if boxes.numel():
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"{name} must be finite; replace unknown faces with a fallback box first")
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bool(bad.any()):
            rows = bad.nonzero().squeeze(1)[:3].tolist()
            raise ValueError(
                f"{name} must be xyxy with x2 >= x1 and y2 >= y1; rows {rows} are not, e.g. {boxes[rows[0]].tolist()}"
            )


def box_iou(boxes1: Tensor, boxes2: Tensor, *, backend: str | None = None, validate: bool | None = None) -> Tensor:
    """IoU of every pair of boxes (torchvision's ``box_iou`` semantics).

    Args:
        boxes1: ``[N, 4]`` xyxy boxes (pixels or relative; integer boxes are converted to float32).
        boxes2: ``[M, 4]`` xyxy boxes on the same device.
        validate: check that boxes are finite with ``x2 >= x1``, ``y2 >= y1`` (``None``: on CPU tensors only,
            since on a GPU the check synchronises).

    Returns:
        ``[N, M]`` float32 (float64 for float64 boxes). Disjoint and zero-area boxes give 0, never NaN.
    """
    boxes1 = _check_boxes(boxes1, "boxes1")
    boxes2 = _check_boxes(boxes2, "boxes2")
    _checks.same_device(boxes2, "boxes2", boxes1, "boxes1")
    common = torch.promote_types(boxes1.dtype, boxes2.dtype)
    boxes1, boxes2 = boxes1.to(common), boxes2.to(common)
    chosen = resolve_backend(boxes1.device, backend)
    if _checks.values_checked(validate, boxes1, boxes2, backend=chosen):
        _check_box_values(boxes1, "boxes1")
        _check_box_values(boxes2, "boxes2")
    return dispatch("box_iou", chosen)(boxes1, boxes2)


def paired_box_iou(
    boxes: Tensor, perm: Tensor | None = None, *, backend: str | None = None, validate: bool | None = None
) -> Tensor:
    """IoU of each face box with its Mixup partner's: ``iou[i] = IoU(boxes[i], boxes[perm[i]])``.

    Args:
        boxes: ``[B, 4]`` xyxy boxes of the faces in the (augmented) images.
        perm: ``[B]`` int64 partners; ``None`` is SSFER's flip pairing (``i`` with ``B-1-i``).
        validate: check boxes and ``perm`` values (``None``: on CPU tensors only).

    Returns:
        ``[B]`` float32 (float64 for float64 boxes), 0 for disjoint or zero-area pairs.
    """
    boxes = _check_boxes(boxes, "boxes")
    b = boxes.shape[0]
    perm = flip_perm(b, boxes.device) if perm is None else _checks.long_vector(perm, b, "perm", boxes, "boxes")
    chosen = resolve_backend(boxes.device, backend)
    if _checks.values_checked(validate, boxes, perm, backend=chosen):
        _check_box_values(boxes, "boxes")
        _checks.index_range(perm, b, "perm", "partner indices")
    return dispatch("paired_box_iou", chosen)(boxes, perm)
