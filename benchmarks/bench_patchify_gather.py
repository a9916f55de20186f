"""``patchify_gather`` (patchify + MAE's keep-gather in one pass) vs its reference and ``torch.compile`` of it.

Minimum bytes: ``fwd`` reads ids_keep and the visible patches of imgs and writes them out; ``full`` adds the
backward, which reads ids_keep and ``grad_out`` and writes the whole ``grad_imgs`` (zeros where not kept).
"""

from __future__ import annotations

import pytest
import torch

import shapes
from ferfast.ops import patchify_gather
from ferfast.reference import patchify_gather_ref

MODES = ("fwd", "full")


def min_bytes(shape: shapes.MAEShape, mode: str) -> int:
    es, ids = shape.element_size, shape.batch * shape.num_keep * 8
    moved = ids + 2 * shape.visible_patches_numel * es
    if mode == "full":
        moved += ids + shape.visible_patches_numel * es + shape.imgs_numel * es
    return moved


@pytest.mark.benchmark(group="patchify_gather")
@pytest.mark.parametrize("mode", MODES)
def test_patchify_gather(bench, target, shape, mode):
    full = mode == "full"
    imgs = shapes.images(shape, target.device).requires_grad_(full)
    ids_keep = shapes.masking(shape, target.device).ids_keep
    p = shape.patch
    gather = bench.impl(
        ferfast=lambda backend: lambda x, ids: patchify_gather(x, ids, p, backend=backend),
        ref=lambda x, ids: patchify_gather_ref(x, ids, p),
    )
    grad_out = torch.randn(shape.batch, shape.num_keep, shape.patch_dim, device=target.device, dtype=shape.dtype)

    def fwd_bwd(x, ids, g):
        return torch.autograd.grad(gather(x, ids), (x,), grad_outputs=(g,))

    bench.run(
        op="patchify_gather",
        mode=mode,
        shape=shape,
        fn=fwd_bwd if full else gather,
        args=(imgs, ids_keep, grad_out) if full else (imgs, ids_keep),
        nbytes=min_bytes(shape, mode),
        shape_desc=f"{shape.describe_images()} -> {shape.batch}x{shape.num_keep}x{shape.patch_dim}",
    )
