"""``random_masking`` alone, and MAE's whole masking step ``random_masking`` + ``patchify_gather`` (group
``mae_masking``), vs the references and ``torch.compile`` of the reference composition.

Forward only: nothing upstream of the indices needs a gradient (MAE's images take none either).
Minimum bytes: ``random_masking`` reads the noise and writes ids_keep, mask and ids_restore; ``mae_masking``
reads the noise and the visible patches of the images and writes the visible patches, mask and ids_restore
(ids_keep can stay inside a fused pass).
"""

from __future__ import annotations

import pytest

import shapes
from ferfast.ops import patchify_gather, random_masking
from ferfast.reference import patchify_gather_ref, random_masking_ref


def masking_bytes(shape: shapes.MAEShape, with_ids_keep: bool = True) -> int:
    b, n, k = shape.batch, shape.num_patches, shape.num_keep
    moved = b * n * 4 + b * n * 4 + b * n * 8  # noise (fp32), mask (noise dtype), ids_restore (int64)
    if with_ids_keep:
        moved += b * k * 8
    return moved


@pytest.mark.benchmark(group="random_masking")
def test_random_masking(bench, target, shape):
    noise = shapes.masking(shape, target.device).noise
    ratio = shape.mask_ratio
    fn = bench.impl(
        ferfast=lambda backend: lambda z: random_masking(z, ratio, backend=backend),
        ref=lambda z: random_masking_ref(z, ratio),
    )
    bench.run(
        op="random_masking",
        mode="fwd",
        shape=shape,
        fn=fn,
        args=(noise,),
        nbytes=masking_bytes(shape),
        shape_desc=f"noise {shape.batch}x{shape.num_patches} fp32, mask_ratio {ratio}",
    )


@pytest.mark.benchmark(group="mae_masking")
def test_mae_masking(bench, target, shape):
    noise = shapes.masking(shape, target.device).noise
    imgs = shapes.images(shape, target.device)
    ratio, p = shape.mask_ratio, shape.patch

    def ferfast_masking(backend):
        def fn(z, imgs):
            ids_keep, mask, ids_restore = random_masking(z, ratio, backend=backend)
            return patchify_gather(imgs, ids_keep, p, backend=backend), mask, ids_restore

        return fn

    def ref_masking(z, imgs):
        ids_keep, mask, ids_restore = random_masking_ref(z, ratio)
        return patchify_gather_ref(imgs, ids_keep, p), mask, ids_restore

    es = shape.element_size
    bench.run(
        op="mae_masking",
        mode="fwd",
        shape=shape,
        fn=bench.impl(ferfast=ferfast_masking, ref=ref_masking),
        args=(noise, imgs),
        nbytes=masking_bytes(shape, with_ids_keep=False) + 2 * shape.visible_patches_numel * es,
        shape_desc=f"{shape.describe_images()}, mask_ratio {ratio}",
    )
