"""``fused_head_masked_mse`` (MAE's ``decoder_pred`` head + masked MSE on the masked tokens only, chunk by
chunk, gradients in forward) vs the reference ``F.linear`` + ``masked_patch_mse_ref`` and ``torch.compile``
of it. MAE's pretraining recipe uses ``norm_pix_loss``, so that is the variant measured.

The op is matmul-bound; its bytes (h, weight, bias, imgs and mask read; in ``full`` also grad_h, grad_weight
and grad_bias written) are recorded for completeness.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import shapes
from ferfast.ops import fused_head_masked_mse
from ferfast.reference import fused_head_masked_mse_ref

MODES = ("fwd", "full")
NORM_PIX_LOSS = True
#: Whether the op takes a ``backend=`` argument; without one, its single path runs on the tensors' device.
HAS_BACKEND_ARG = "backend" in inspect.signature(fused_head_masked_mse).parameters


def min_bytes(shape: shapes.MAEShape, mode: str) -> int:
    es, b, n, d, pd = shape.element_size, shape.batch, shape.num_patches, shape.decoder_dim, shape.patch_dim
    params = (pd * d + pd) * es
    moved = b * n * d * es + params + shape.imgs_numel * es + b * n * 4
    if mode == "full":
        moved += b * n * d * es + params
    return moved


@pytest.mark.benchmark(group="fused_head_masked_mse")
@pytest.mark.parametrize("mode", MODES)
def test_fused_head_masked_mse(bench, target, shape, mode):
    if target.backend == "triton" and not HAS_BACKEND_ARG:
        pytest.skip("fused_head_masked_mse takes no backend= argument: its one path on CUDA is ferfast-cuda")
    full = mode == "full"
    h, weight, bias = shapes.head(shape, target.device, requires_grad=full)
    imgs = shapes.images(shape, target.device)
    mask = shapes.masking(shape, target.device).mask
    p = shape.patch

    def ferfast_head(backend):
        kwargs = {"backend": backend} if HAS_BACKEND_ARG else {}
        return lambda h, w, b, i, m: fused_head_masked_mse(h, w, b, i, m, p, NORM_PIX_LOSS, **kwargs)

    loss_fn = bench.impl(
        ferfast=ferfast_head, ref=lambda h, w, b, i, m: fused_head_masked_mse_ref(h, w, b, i, m, p, NORM_PIX_LOSS)
    )

    def fwd_bwd(h, w, b, i, m):
        return torch.autograd.grad(loss_fn(h, w, b, i, m), (h, w, b))

    bench.run(
        op="fused_head_masked_mse",
        mode=mode,
        shape=shape,
        fn=fwd_bwd if full else loss_fn,
        args=(h, weight, bias, imgs, mask),
        nbytes=min_bytes(shape, mode),
        variant=f"norm_pix_loss={NORM_PIX_LOSS}",
        shape_desc=f"h {shape.batch}x{shape.num_patches}x{shape.decoder_dim}, weight {shape.patch_dim}x"
        f"{shape.decoder_dim}, {shape.describe_images()}",
    )
