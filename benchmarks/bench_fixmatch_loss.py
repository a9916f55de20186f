"""``fixmatch_loss`` (SSFER's stage-2 unlabeled loss) vs its reference and ``torch.compile`` of the reference.

Mode ``full``: the loss and the mask rate forward, then ``torch.autograd.grad`` of the loss w.r.t. the student's
``logits_strong [B, K]`` (a leaf); the EMA teacher's ``logits_weak`` take no gradient. Shapes: the unlabeled
batch of SSFER's step (B=64) and FixMatch's ``mu = 7`` times that (B=448), K = 7 expressions.

Minimum bytes: read both logits, write ``grad_strong`` once. At these sizes (a few KB) the op is bound by
per-call overheads, not by memory.
"""

from __future__ import annotations

import pytest
import torch

import shapes
from ferfast.ops import fixmatch_loss
from ferfast.reference import fixmatch_loss_ref

THRESHOLD = 0.7  # SSFER's confidence threshold
WEAK_SCALE = 3.0  # teacher logits ~ N(0, 3^2): about half of the pseudo-labels pass the threshold


def min_bytes(shape: shapes.ClsShape) -> int:
    return 3 * shape.logits_numel * shape.element_size


@pytest.mark.benchmark(group="fixmatch_loss")
def test_fixmatch_loss(bench, target, fixmatch_shape):
    shape, device = fixmatch_shape, target.device
    weak = shapes.cls_logits(shape, device, seed=21, scale=WEAK_SCALE)
    strong = shapes.cls_logits(shape, device, seed=22, requires_grad=True)
    bench.require_kernels("fixmatch_loss")
    loss_fn = bench.impl(
        ferfast=lambda backend: lambda w, s: fixmatch_loss(w, s, THRESHOLD, backend=backend),
        ref=lambda w, s: fixmatch_loss_ref(w, s, THRESHOLD)[:2],
    )

    def fwd_bwd(w, s):
        loss, mask_rate = loss_fn(w, s)
        return torch.autograd.grad(loss, (s,)), mask_rate

    rate = float(fixmatch_loss_ref(weak, strong.detach(), THRESHOLD)[1])
    bench.run(
        op="fixmatch_loss",
        mode="full",
        shape=shape,
        fn=fwd_bwd,
        args=(weak, strong),
        nbytes=min_bytes(shape),
        variant=f"threshold={THRESHOLD}",
        shape_desc=f"{shape.describe_logits()} (weak: teacher, strong: student), mask rate {rate:.2f}",
    )
