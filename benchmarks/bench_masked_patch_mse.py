"""``masked_patch_mse`` (MAE's ``forward_loss``) vs its reference and ``torch.compile`` of the reference.

Minimum bytes: ``fwd`` (no grad) reads imgs, pred and the mask; ``full`` (loss + ``torch.autograd.grad``
w.r.t. pred) also writes ``grad_pred`` once. The fused kernels reach that minimum: they never
materialise the patchified target and compute ``grad_pred`` during the forward pass.
"""

from __future__ import annotations

import pytest
import torch

import shapes
from ferfast.ops import masked_patch_mse
from ferfast.reference import masked_patch_mse_ref

MODES = ("fwd", "full")


def min_bytes(shape: shapes.MAEShape, mask: torch.Tensor, mode: str) -> int:
    es = shape.element_size
    moved = shape.imgs_numel * es + shape.pred_numel * es + mask.numel() * mask.element_size()
    if mode == "full":
        moved += shape.pred_numel * es  # grad_pred
    return moved


@pytest.mark.benchmark(group="masked_patch_mse")
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["pix", "normpix"])
@pytest.mark.parametrize("mode", MODES)
def test_masked_patch_mse(bench, target, shape, mode, norm_pix_loss):
    full = mode == "full"
    imgs = shapes.images(shape, target.device)
    pred = shapes.predictions(shape, target.device, requires_grad=full)
    mask = shapes.masking(shape, target.device).mask
    p = shape.patch

    loss_fn = bench.impl(
        ferfast=lambda backend: lambda i, x, m: masked_patch_mse(i, x, m, p, norm_pix_loss, backend=backend),
        ref=lambda i, x, m: masked_patch_mse_ref(i, x, m, p, norm_pix_loss),
    )

    def fwd_bwd(i, x, m):
        return torch.autograd.grad(loss_fn(i, x, m), (x,))

    bench.run(
        op="masked_patch_mse",
        mode=mode,
        shape=shape,
        fn=fwd_bwd if full else loss_fn,
        args=(imgs, pred, mask),
        nbytes=min_bytes(shape, mask, mode),
        variant=f"norm_pix_loss={norm_pix_loss}",
        shape_desc=f"{shape.describe_images()}, pred {shape.batch}x{shape.num_patches}x{shape.patch_dim}",
    )
