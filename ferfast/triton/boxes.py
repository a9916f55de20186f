"""Triton kernels for the face-box IoU of face-IoU Mixup (``ferfast_triton::box_iou``, ``paired_box_iou``).

- ``box_iou``: one program per ``[BLOCK_N, BLOCK_M]`` tile of the ``[N, M]`` result; each box's
  four coordinates are loaded once per tile and broadcast.
- ``paired_box_iou``: one program per block of ``BLOCK`` pairs ``(i, perm[i])``.

Both compute torchvision's IoU in float32 (float64 for float64 boxes): ``area = (x2-x1)*(y2-y1)``,
``inter = max(min(x2)-max(x1), 0) * max(min(y2)-max(y1), 0)``, ``union = area1 + area2 - inter``
and ``inter / union``, or 0 when the union is not positive (two zero-area boxes: never NaN).
``perm`` is not range-checked on the host (that would synchronise a GPU): an out-of-range
partner reads a zero box. Kernels compiled with ``TRITON_DEBUG=1`` assert the range.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ferfast.reference.dtypes import acc_dtype
from ferfast.triton.utils import (
    cast_rn,
    cdiv,
    check,
    check_floating,
    check_perm,
    check_same_device,
    define_op,
    div_acc,
    launch,
    limit,
    next_power_of_2,
    to_acc,
)

__all__ = ["box_iou", "paired_box_iou"]


@triton.jit
def _load_boxes(ptr, rows, valid, WIDE: tl.constexpr):
    """The xyxy coordinates of boxes ``rows`` of a contiguous ``[N, 4]`` tensor, in the accumulation type."""
    base = ptr + rows * 4
    x1 = to_acc(tl.load(base, mask=valid, other=0), WIDE)
    y1 = to_acc(tl.load(base + 1, mask=valid, other=0), WIDE)
    x2 = to_acc(tl.load(base + 2, mask=valid, other=0), WIDE)
    y2 = to_acc(tl.load(base + 3, mask=valid, other=0), WIDE)
    return x1, y1, x2, y2


@triton.jit
def _iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, WIDE: tl.constexpr):
    """IoU of (broadcast) boxes a and b, 0 where the union is not positive (torchvision's op order)."""
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    w = tl.maximum(tl.minimum(ax2, bx2) - tl.maximum(ax1, bx1), 0.0)
    h = tl.maximum(tl.minimum(ay2, by2) - tl.maximum(ay1, by1), 0.0)
    inter = w * h
    union = area_a + area_b - inter
    positive = union > 0
    return tl.where(positive, div_acc(inter, tl.where(positive, union, 1.0), WIDE), 0.0)


@triton.jit
def _box_iou_kernel(
    boxes1_ptr, boxes2_ptr, out_ptr, N, M, WIDE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid_n = rows < N
    valid_m = cols < M
    ax1, ay1, ax2, ay2 = _load_boxes(boxes1_ptr, rows, valid_n, WIDE)
    bx1, by1, bx2, by2 = _load_boxes(boxes2_ptr, cols, valid_m, WIDE)
    iou = _iou(
        ax1[:, None],
        ay1[:, None],
        ax2[:, None],
        ay2[:, None],
        bx1[None, :],
        by1[None, :],
        bx2[None, :],
        by2[None, :],
        WIDE,
    )
    out = cast_rn(iou, out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * M + cols[None, :], out, mask=valid_n[:, None] & valid_m[None, :])


@triton.jit
def _paired_box_iou_kernel(boxes_ptr, perm_ptr, out_ptr, B, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < B
    partner = tl.load(perm_ptr + rows, mask=valid, other=0)
    tl.device_assert(~valid | ((partner >= 0) & (partner < B)), "paired_box_iou: perm out of range")
    ok = valid & (partner >= 0) & (partner < B)
    ax1, ay1, ax2, ay2 = _load_boxes(boxes_ptr, rows, valid, WIDE)
    bx1, by1, bx2, by2 = _load_boxes(boxes_ptr, partner, ok, WIDE)
    iou = _iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, WIDE)
    tl.store(out_ptr + rows, iou, mask=valid)


def _check_boxes(boxes: Tensor, name: str) -> None:
    check_floating(boxes, name)
    check(boxes.dim() == 2 and boxes.shape[1] == 4, f"{name} must have shape [N, 4] (xyxy), got {tuple(boxes.shape)}")


@define_op("ferfast_triton::box_iou")
def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    check_same_device(boxes1, "boxes1", boxes2, "boxes2")
    # Like the C++ op, the result's dtype follows boxes1; float64 math if either is float64.
    wide = acc_dtype(boxes1, boxes2) == torch.float64
    boxes1 = boxes1.contiguous()
    boxes2 = boxes2.contiguous()
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = boxes1.new_empty((n, m), dtype=acc_dtype(boxes1))
    if out.numel() > 0:
        block_n = min(next_power_of_2(n), 32)
        block_m = min(next_power_of_2(m), 64)
        grid = (cdiv(n, block_n), cdiv(m, block_m))
        limit(grid[1] <= 65535, f"boxes2 has too many boxes for one launch: {m}")
        launch(_box_iou_kernel, grid)(
            boxes1, boxes2, out, n, m, WIDE=wide, BLOCK_N=block_n, BLOCK_M=block_m, num_warps=4
        )
    return out


@define_op("ferfast_triton::paired_box_iou")
def paired_box_iou(boxes: Tensor, perm: Tensor) -> Tensor:
    _check_boxes(boxes, "boxes")
    b = boxes.shape[0]
    check_perm(perm, b, boxes, "boxes")
    boxes = boxes.contiguous()
    perm = perm.contiguous()
    out = boxes.new_empty((b,), dtype=acc_dtype(boxes))
    if b > 0:
        block = min(next_power_of_2(b), 1024)
        launch(_paired_box_iou_kernel, (cdiv(b, block),))(
            boxes, perm, out, b, WIDE=boxes.dtype == torch.float64, BLOCK=block, num_warps=4
        )
    return out
