"""Plain-PyTorch specification of the face-box IoU used by face-IoU Mixup.

:func:`box_iou_ref` follows torchvision's ``ops/boxes.py`` (``box_iou`` with
``_box_inter_union`` and ``_upcast``); :func:`paired_box_iou_ref` is the same IoU for
each box and its Mixup partner. :func:`ssfer_paired_iou_loop_ref` transcribes the
Python loop of SSFER's ``fine-tune.py:tensor2box2iou`` (after its face detector) and is
the baseline of the benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SSFER_FALLBACK_BOX", "box_area_ref", "box_iou_ref", "paired_box_iou_ref", "ssfer_paired_iou_loop_ref"]

#: SSFER's box (pixels of a 224 x 224 image) when the detector does not find exactly one face.
SSFER_FALLBACK_BOX = (25.0, 25.0, 220.0, 220.0)


def _acc(t: Tensor) -> Tensor:
    """Boxes are measured in float32 (float64 stays float64): integer and half boxes are upcast."""
    return t.double() if t.dtype == torch.float64 else t.float()


def box_area_ref(boxes: Tensor) -> Tensor:
    """Areas of ``[N, 4]`` xyxy boxes (``(x2 - x1) * (y2 - y1)``)."""
    boxes = _acc(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou_ref(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: ``[N, 4]`` x ``[M, 4]`` xyxy boxes -> ``[N, M]`` (float32; float64 for float64 boxes).

    torchvision's ``box_iou``, with one guard: a pair whose union is empty (two zero-area
    boxes) has IoU 0 instead of 0/0 = NaN. Disjoint and zero-area boxes give 0.
    """
    b1, b2 = _acc(boxes1), _acc(boxes2)
    area1, area2 = box_area_ref(b1), box_area_ref(b2)
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)), 0.0)


def paired_box_iou_ref(boxes: Tensor, perm: Tensor) -> Tensor:
    """IoU of box ``i`` with box ``perm[i]``: ``[B, 4]`` xyxy boxes, ``[B]`` int64 -> ``[B]``.

    The diagonal of :func:`box_iou_ref` (``boxes``, ``boxes[perm]``), computed per pair.
    With SSFER's flip pairing (``perm = arange(B).flip(0)``) it is the IoU list of
    ``tensor2box2iou`` (which it mirrors: ``iou[i] == iou[B-1-i]``).
    """
    b1, b2 = _acc(boxes), _acc(boxes)[perm]
    area1, area2 = box_area_ref(b1), box_area_ref(b2)
    lt = torch.max(b1[:, :2], b2[:, :2])
    rb = torch.min(b1[:, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)), 0.0)


def ssfer_paired_iou_loop_ref(detections: list[Tensor]) -> Tensor:
    """SSFER's ``tensor2box2iou`` after the detector, as released: a Python loop over flip pairs.

    ``detections[i]`` holds the ``[n_i, 4]`` xyxy pixel boxes the detector found in image ``i``;
    an image without exactly one face gets :data:`SSFER_FALLBACK_BOX`. Coordinates are rounded
    with ``int(x + .5)``, the IoU of the first half of the pairs is computed one pair at a time
    and mirrored to the second half (so the batch must be even). Returns ``[B]`` float32 on the
    CPU (the released code then moves it to the GPU). Unlike :func:`paired_box_iou_ref` it has no
    guard: two zero-area boxes give NaN.
    """
    if len(detections) % 2:
        raise ValueError("SSFER's IoU loop needs an even batch (it mirrors the first half)")
    boxes = []
    for det in detections:
        if len(det) != 1:
            boxes.append(torch.tensor(SSFER_FALLBACK_BOX, dtype=torch.int64))
        else:
            boxes.append(torch.tensor([int(float(v) + 0.5) for v in det[0, :4]], dtype=torch.int64))
    ious = []
    for i in range(len(boxes) // 2):
        a, b = boxes[i], boxes[len(boxes) - 1 - i]
        ix = max(0, int(min(a[2], b[2]) - max(a[0], b[0])))
        iy = max(0, int(min(a[3], b[3]) - max(a[1], b[1])))
        inter = ix * iy
        union = int((a[2] - a[0]) * (a[3] - a[1])) + int((b[2] - b[0]) * (b[3] - b[1])) - inter
        ious.append(inter / union if union else float("nan"))
    ious += ious[::-1]
    return torch.tensor(ious, dtype=torch.float32)
