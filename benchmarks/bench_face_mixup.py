"""SSFER's stage-1 step without the network (face-IoU Mixup), and the mixing alone.

``face_iou_mixup_step`` (mode ``full``): the IoU of each face box with its partner's, the mixed images, the
soft Mixup targets, SSFER's loss forward and ``torch.autograd.grad`` of it w.r.t. both logits (``[B, K]`` leaves
standing in for the network's outputs). Providers, besides the standard ones (``ferfast-*``: ``paired_box_iou``
+ ``face_mixup`` + ``mixup_soft_targets`` + ``facemix_loss``; ``torch-ref``: the vectorised eager references
of the same four; ``torch-compile(ref)``: ``torch.compile`` of that reference step):

- ``ssfer-eager``: :func:`ferfast.reference.ssfer_stage1_loss_ref`, SSFER's released path op for op: the IoU
  loop of ``tensor2box2iou`` over the pairs of per-image ``[1, 4]`` pixel detections (on the CPU, as SSFER's
  detector leaves them), timm's ``_mix_batch`` *in place*, timm's ``mixup_target`` and two cross-entropy calls.
  It overwrites the loader's batch, so every round gets a fresh copy of ``x``, made in the untimed setup.

Variants: ``with_originals=True`` (the paper's mode: ``[x; mixed]``, the ``[2B]`` batch one forward pass
takes) and ``with_originals=False`` (``[B]`` mixed images only). ``ssfer-eager`` has no such option (it mixes
the ``[B]`` batch in place): the same computation is timed in both groups, as the baseline of each.

``face_mixup`` (mode ``fwd``): the mixing alone, same variants and providers (``ssfer-eager``: timm's in-place
``_mix_batch`` on a fresh copy). Its bandwidth, as a fraction of the copy bandwidth, is the mixing's target:
the rest of the step moves a few KB.

Minimum bytes: the mixing reads ``x`` once and writes its output once (``B`` or ``2B`` images); the step also
reads the boxes, labels and both logits and writes both logits' gradients (together < 0.01% of the total).
"""

from __future__ import annotations

import pytest
import torch

import shapes
from ferfast.ops import face_mixup, facemix_loss, mixup_soft_targets, paired_box_iou
from ferfast.reference import (
    face_mixup_ref,
    facemix_loss_ref,
    flip_perm,
    mixup_soft_targets_ref,
    paired_box_iou_ref,
    ssfer_mix_batch_,
    ssfer_stage1_loss_ref,
)

SSFER = "ssfer-eager"
LABEL_SMOOTHING = 0.1  # SSFER's Mixup targets (timm's ``label_smoothing``)
STAGE1_OPS = ("paired_box_iou", "face_mixup", "mixup_soft_targets", "facemix_loss")
WITH_ORIGINALS = pytest.mark.parametrize("with_originals", [True, False], ids=["2B", "B"])


def mix_bytes(shape: shapes.ClsShape, with_originals: bool) -> int:
    """Read ``x`` once, write ``[x; mixed]`` (2B images) or ``mixed`` (B images) once."""
    return shape.images_numel * shape.element_size * (3 if with_originals else 2)


def step_bytes(shape: shapes.ClsShape, with_originals: bool) -> int:
    b, es = shape.batch, shape.element_size
    small = b * 4 * 4 + b * 8 + 2 * shape.logits_numel * es  # boxes (fp32), labels (int64), both logits
    small += 2 * shape.logits_numel * es  # both gradients
    return mix_bytes(shape, with_originals) + small


def _variant(with_originals: bool) -> str:
    return f"with_originals={with_originals}"


@pytest.mark.benchmark(group="face_iou_mixup_step")
@pytest.mark.extra_providers(SSFER)
@WITH_ORIGINALS
def test_face_iou_mixup_step(bench, target, mixup_shape, with_originals):
    shape, device = mixup_shape, target.device
    k, lam = shape.num_classes, shapes.mixup_lam()
    x = shapes.cls_images(shape, device)
    y = shapes.cls_labels(shape, device)
    boxes = shapes.face_boxes(shape, device)
    logits_real = shapes.cls_logits(shape, device, seed=15, requires_grad=True)
    logits_mixed = shapes.cls_logits(shape, device, seed=16, requires_grad=True)
    desc = f"{shape.describe_images()}, lam {lam:.3f}, label_smoothing {LABEL_SMOOTHING}"
    common = {
        "op": "face_iou_mixup_step",
        "mode": "full",
        "shape": shape,
        "nbytes": step_bytes(shape, with_originals),
        "variant": _variant(with_originals),
    }

    if target.provider == SSFER:
        dets = shapes.detections(shape, boxes)

        def ssfer_step(x_fresh, y, dets, lr, lm):
            loss, mixed = ssfer_stage1_loss_ref(lr, lm, x_fresh, y, dets, lam, k, LABEL_SMOOTHING)
            return torch.autograd.grad(loss, (lr, lm)), mixed

        bench.run(
            **common,
            fn=ssfer_step,
            args=(x.clone(), y, dets, logits_real, logits_mixed),
            fresh_args=lambda: (x.clone(), y, dets, logits_real, logits_mixed),
            shape_desc=desc + "; ssfer-eager: [B] mixed in place, IoU loop over [1, 4] pixel detections",
        )
        return

    bench.require_kernels(*STAGE1_OPS)

    def ferfast_step(backend):
        def step(x, y, boxes, lr, lm):
            iou = paired_box_iou(boxes, backend=backend)
            images = face_mixup(x, lam, with_originals=with_originals, backend=backend)
            y_soft = mixup_soft_targets(y, k, lam, label_smoothing=LABEL_SMOOTHING, backend=backend)
            return facemix_loss(lr, lm, y, y_soft, iou, backend=backend), images

        return step

    def ref_step(x, y, boxes, lr, lm):
        perm = flip_perm(x.shape[0], x.device)
        iou = paired_box_iou_ref(boxes, perm)
        images = face_mixup_ref(x, lam, perm, with_originals)
        y_soft = mixup_soft_targets_ref(y, k, lam, perm, LABEL_SMOOTHING)
        return facemix_loss_ref(lr, lm, y, y_soft, iou, perm), images

    step = bench.impl(ferfast=ferfast_step, ref=ref_step)

    def fwd_bwd(x, y, boxes, lr, lm):
        loss, images = step(x, y, boxes, lr, lm)  # images: the network's input, kept (and compiled) as an output
        return torch.autograd.grad(loss, (lr, lm)), images

    bench.run(**common, fn=fwd_bwd, args=(x, y, boxes, logits_real, logits_mixed), shape_desc=desc)


@pytest.mark.benchmark(group="face_mixup")
@pytest.mark.extra_providers(SSFER)
@WITH_ORIGINALS
def test_face_mixup(bench, target, mixup_shape, with_originals):
    shape, device = mixup_shape, target.device
    lam = shapes.mixup_lam()
    x = shapes.cls_images(shape, device)
    common = {
        "op": "face_mixup",
        "mode": "fwd",
        "shape": shape,
        "nbytes": mix_bytes(shape, with_originals),
        "variant": _variant(with_originals),
        "shape_desc": f"{shape.describe_images()}, lam {lam:.3f}, flip partners",
    }
    if target.provider == SSFER:
        bench.run(
            **common,
            fn=lambda x_fresh: ssfer_mix_batch_(x_fresh, lam),
            args=(x.clone(),),
            fresh_args=lambda: (x.clone(),),
        )
        return

    bench.require_kernels("face_mixup")
    fn = bench.impl(
        ferfast=lambda backend: lambda x: face_mixup(x, lam, with_originals=with_originals, backend=backend),
        ref=lambda x: face_mixup_ref(x, lam, flip_perm(x.shape[0], x.device), with_originals),
    )
    bench.run(**common, fn=fn, args=(x,))
