"""patchify_gather: the visible patches in MAE's nhwpqc order, and their gradient scattered back."""

import pytest
import torch

import ferfast
from ferfast.reference import patchify_gather_ref, patchify_ref, random_masking_ref
from tests.utils import (
    BACKENDS,
    DTYPES,
    assert_close_to_ref,
    assert_identical,
    backend_cases,
    backend_device,
    is_interpreted,
    leaf,
    make_imgs,
    non_contiguous,
)

# (B, C, H, W, patch): MAE's 224/16 grid, small and odd patches, non-square images, odd C, p = 1.
SHAPES = [
    pytest.param((1, 3, 224, 224, 16), id="B1-224-p16"),
    pytest.param((2, 3, 32, 32, 8), id="B2-32-p8"),
    pytest.param((3, 1, 28, 28, 7), id="B3-C1-28-p7"),
    pytest.param((2, 3, 24, 40, 4), id="B2-24x40-p4"),
    pytest.param((2, 5, 6, 6, 2), id="B2-C5-6-p2"),
    pytest.param((1, 3, 8, 8, 1), id="B1-8-p1"),
]
SHAPES_INTERPRETED = [
    pytest.param((1, 3, 32, 32, 8), id="B1-32-p8"),
    pytest.param((2, 3, 32, 32, 4), id="B2-32-p4"),
    pytest.param((2, 1, 12, 20, 4), id="B2-C1-12x20-p4"),
]
RATIOS = [0.0, 0.75, 0.99]


def ids_for(batch: int, length: int, mask_ratio: float) -> torch.Tensor:
    return random_masking_ref(torch.rand(batch, length), mask_ratio)[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_ratio", RATIOS)
@pytest.mark.parametrize(("backend", "shape"), backend_cases(SHAPES, SHAPES_INTERPRETED))
def test_patchify_gather_matches_reference(backend, shape, mask_ratio, dtype, device):
    """Forward and grad(imgs) are pure copies: identical to the reference, bit for bit."""
    b, c, h, w, p = shape
    length = (h // p) * (w // p)
    imgs = make_imgs(b, c, h, w, dtype)
    ids_keep = ids_for(b, length, mask_ratio)

    x = leaf(imgs, device)
    out = ferfast.patchify_gather(x, ids_keep.to(device), p, backend=backend)
    x_ref = leaf(imgs, "cpu")
    ref = patchify_gather_ref(x_ref, ids_keep, p)
    assert out.device.type == device.type
    assert_identical(out, ref, name="patches")

    grad_out = torch.randn(ref.shape).to(dtype)
    out.backward(grad_out.to(device))
    ref.backward(grad_out)
    assert_identical(x.grad, x_ref.grad, name="grad imgs")
    # patches that were not kept get exactly zero gradient
    removed = torch.ones(b, length, dtype=torch.bool)
    removed.scatter_(1, ids_keep, False)
    removed_grad = patchify_ref(x.grad.detach().cpu(), p)[removed]
    assert bool((removed_grad == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_patchify_gather_repeated_ids_accumulate(backend, dtype, device):
    """``ids_keep`` need not be a masking's: repeated patches are copied, and their gradients add up."""
    imgs = make_imgs(2, 3, 16, 16, dtype)
    ids_keep = torch.tensor([[0, 5, 5, 15, 0, 5], [3, 3, 3, 3, 1, 2]])
    x = leaf(imgs, device)
    out = ferfast.patchify_gather(x, ids_keep.to(device), 4, backend=backend)
    x_ref = leaf(imgs, "cpu", torch.float64)
    ref = patchify_gather_ref(x_ref, ids_keep, 4)
    assert_identical(out, ref.to(dtype), name="patches")
    grad_out = torch.randn(ref.shape, dtype=torch.float64).to(dtype)
    out.backward(grad_out.to(device))
    ref.backward(grad_out.double())
    assert_close_to_ref(x.grad, x_ref.grad, name="grad imgs", dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patchify_gather_non_contiguous_inputs(backend, device):
    b, c, h, w, p = (2, 3, 16, 16, 4) if is_interpreted(backend) else (2, 3, 32, 48, 8)
    length = (h // p) * (w // p)
    imgs = make_imgs(b, c, h, w, torch.float32)
    ids_keep = ids_for(b, length, 0.75)
    ref = patchify_gather_ref(imgs, ids_keep, p)

    base = leaf(torch.stack([imgs, imgs], dim=-1), device)  # imgs = base[..., 0]: stride 2 in W
    views = {"strided": base[..., 0], "channels_last": leaf(imgs, device).contiguous(memory_format=torch.channels_last)}
    for name, view in views.items():
        assert not view.is_contiguous(), name
        out = ferfast.patchify_gather(view, non_contiguous(ids_keep).to(device), p, backend=backend)
        assert_identical(out, ref, name=f"patches ({name})")
    # gradient through the strided view, with a non-contiguous (expanded) incoming gradient
    out = ferfast.patchify_gather(views["strided"], ids_keep.to(device), p, backend=backend)
    out.sum().backward()
    x_ref = leaf(imgs, "cpu")
    patchify_gather_ref(x_ref, ids_keep, p).sum().backward()
    assert_identical(base.grad[..., 0], x_ref.grad, name="grad imgs")
    assert bool((base.grad[..., 1] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_patchify_gather_nhwpqc_layout(backend, device):
    """A hand-checked value: element (i*p + j)*C + c of patch l is pixel (c, row(l)*p + i, col(l)*p + j)."""
    b, c, h, w, p = 1, 2, 4, 6, 2
    imgs = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)
    ids_keep = torch.tensor([[4, 0]])  # patch 4 = grid row 1, column 1
    out = ferfast.patchify_gather(imgs.to(device), ids_keep.to(device), p, backend=backend).cpu()
    expected_first = [imgs[0, ch, 2 + i, 2 + j].item() for i in range(p) for j in range(p) for ch in range(c)]
    assert out[0, 0].tolist() == expected_first
    assert out[0, 1].tolist() == [0.0, 24.0, 1.0, 25.0, 6.0, 30.0, 7.0, 31.0]


@pytest.mark.ext
@pytest.mark.parametrize("p", [1, 2])
def test_gradcheck_native(p):
    backend_device("cpu")
    imgs = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    ids_keep = torch.tensor([[0, 3, 1], [2, 2, 0]]) if p == 2 else ids_for(2, 16, 0.5)
    assert torch.autograd.gradcheck(lambda x: ferfast.patchify_gather(x, ids_keep, p, backend="cpu"), (imgs,))


# ---- registration, argument checks -------------------------------------------------------------


def _opcheck_samples(device, dtype=torch.float32):
    imgs = make_imgs(2, 3, 16, 16, dtype).to(device)
    ids_keep = ids_for(2, 16, 0.75).to(device)
    grad = torch.randn(2, 4, 48).to(dtype).to(device)
    return [
        ("patchify_gather", (imgs.clone().requires_grad_(True), ids_keep, 4)),
        ("patchify_gather", (imgs, ids_keep, 4)),
        ("_patchify_gather_backward", (grad, ids_keep, 4, 3, 16, 16)),
    ]


@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_native(dtype):
    device = backend_device("cpu")
    for name, args in _opcheck_samples(device, dtype):
        torch.library.opcheck(getattr(torch.ops.ferfast, name).default, args)


@pytest.mark.triton
@pytest.mark.parametrize("name", ["patchify_gather", "_patchify_gather_backward"])
def test_opcheck_triton(name):
    device = backend_device("triton")
    for op_name, args in _opcheck_samples(device):
        if op_name == name:
            torch.library.opcheck(getattr(torch.ops.ferfast_triton, name).default, args)


IMGS = torch.randn(2, 3, 8, 8)
IDS = torch.tensor([[0, 1], [2, 3]])


@pytest.mark.parametrize(
    ("imgs", "ids_keep", "patch_size", "backend", "error", "match"),
    [
        pytest.param(IMGS.numpy(), IDS, 4, None, TypeError, "imgs", id="numpy-imgs"),
        pytest.param(IMGS, IDS.tolist(), 4, None, TypeError, "ids_keep", id="list-ids"),
        pytest.param(IMGS[0], IDS, 4, None, ValueError, "imgs", id="rank3-imgs"),
        pytest.param(IMGS[None], IDS, 4, None, ValueError, "imgs", id="rank5-imgs"),
        pytest.param((IMGS * 255).to(torch.uint8), IDS, 4, None, TypeError, "imgs", id="uint8-imgs"),
        pytest.param(IMGS.long(), IDS, 4, None, TypeError, "imgs", id="int64-imgs"),
        pytest.param(IMGS, IDS, 3, None, ValueError, "divisible by patch_size", id="not-divisible"),
        pytest.param(torch.randn(2, 3, 8, 12), IDS, 8, None, ValueError, "patch_size", id="width-not-divisible"),
        pytest.param(IMGS, IDS, 0, None, ValueError, "patch_size", id="patch0"),
        pytest.param(IMGS, IDS, -4, None, ValueError, "patch_size", id="patch-neg"),
        pytest.param(IMGS, IDS, 4.0, None, ValueError, "patch_size", id="patch-float"),
        pytest.param(IMGS, IDS, True, None, ValueError, "patch_size", id="patch-bool"),
        pytest.param(IMGS, IDS.int(), 4, None, TypeError, "ids_keep", id="int32-ids"),
        pytest.param(IMGS, IDS.float(), 4, None, TypeError, "ids_keep", id="float-ids"),
        pytest.param(IMGS, IDS[0], 4, None, ValueError, "ids_keep", id="rank1-ids"),
        pytest.param(IMGS, IDS[:1], 4, None, ValueError, "ids_keep", id="batch-mismatch"),
        pytest.param(IMGS, IDS.to("meta"), 4, None, ValueError, "ids_keep", id="meta-ids"),
        pytest.param(IMGS.to("meta"), IDS, 4, None, ValueError, "ids_keep", id="meta-imgs"),
        pytest.param(IMGS, IDS, 4, "fast", ValueError, "backend", id="bad-backend"),
        pytest.param(IMGS, IDS, 4, "cuda", ValueError, "backend", id="unavailable-backend"),
    ],
)
def test_patchify_gather_rejects_bad_input(imgs, ids_keep, patch_size, backend, error, match):
    with pytest.raises(error, match=match):
        ferfast.patchify_gather(imgs, ids_keep, patch_size, backend=backend)


@pytest.mark.ext
def test_native_kernel_rejects_out_of_range_ids():
    """The C++ kernel range-checks ids as it reads them (the public op checks them in Python only where
    ``validate`` asks: a GPU check would synchronise)."""
    backend_device("cpu")
    with pytest.raises(ValueError, match="ids_keep"):
        ferfast.patchify_gather(IMGS, torch.tensor([[0, 4], [1, 2]]), 4, backend="cpu")
    with pytest.raises(ValueError, match="ids_keep"):
        ferfast.patchify_gather(IMGS, torch.tensor([[0, -1], [1, 2]]), 4, backend="cpu")
