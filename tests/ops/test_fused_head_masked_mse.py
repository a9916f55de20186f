"""fused_head_masked_mse: MAE's decoder_pred head + forward_loss on masked tokens only (h, weight, bias grads)."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import ferfast
from ferfast.reference import fused_head_masked_mse_ref
from tests.utils import (
    BACKEND_NAMES,
    BACKENDS,
    DTYPES,
    LOW_PRECISION,
    assert_close_to_ref,
    backend_cases,
    backend_device,
    leaf,
    make_imgs,
    make_mask,
    non_contiguous,
)

#: ``fused_head_masked_mse`` is one PyTorch implementation (no ``backend=``): its "cpu" and "cuda" cases
#: run it on that device; a Triton case can only run once the op takes ``backend=``.
TAKES_BACKEND = "backend" in inspect.signature(ferfast.fused_head_masked_mse).parameters


FUSED_BACKEND_NAMES = BACKEND_NAMES if TAKES_BACKEND else ("cpu", "cuda")
FUSED_BACKENDS = [p for p in BACKENDS if p.values[0] in FUSED_BACKEND_NAMES]


def run_op(backend, *args, **kwargs):
    if TAKES_BACKEND:
        kwargs["backend"] = backend
    return ferfast.fused_head_masked_mse(*args, **kwargs)


@pytest.mark.triton
@pytest.mark.skipif(not TAKES_BACKEND, reason="fused_head_masked_mse has no backend= argument: no Triton version")
def test_fused_head_masked_mse_triton_backend_exists():
    """Placeholder that turns into a check once the op takes backend=: triton is accepted on its device."""
    device = backend_device("triton")
    hidden, weight, bias, imgs, mask, p, _ = make_case((1, 3, 16, 16, 8, 8, "ratio0.75", True, 4096), torch.float32)
    args = [t.to(device) for t in (hidden, weight, bias, imgs, mask)]
    loss = run_op("triton", *args, p)
    assert_close_to_ref(loss, reference(hidden, weight, bias, imgs, mask, p, False, torch.float64)[0], name="loss")


# (B, C, H, W, patch, D, mask kind, bias, chunk_size): MAE's 224/16 grid, odd D, no bias, ratio 0.99,
# rows fully masked or not, an empty mask, weighted masks, p = 1, and chunks that split the masked rows.
CASES = [
    pytest.param((1, 3, 224, 224, 16, 64, "ratio0.75", True, 4096), id="B1-224-p16-D64"),
    pytest.param((2, 3, 32, 32, 8, 33, "ratio0.75", True, 5), id="B2-32-p8-D33-chunk5"),
    pytest.param((3, 3, 32, 32, 4, 17, "rows", False, 7), id="B3-32-p4-D17-rows-nobias"),
    pytest.param((3, 1, 28, 28, 7, 8, "ratio0.99", True, 4096), id="B3-C1-p7-D8-r0.99"),
    pytest.param((2, 3, 16, 16, 8, 16, "none", True, 4096), id="B2-p8-D16-nomask"),
    pytest.param((2, 2, 4, 4, 1, 5, "weights", True, 3), id="B2-C2-p1-D5-weights"),
]
CASES_INTERPRETED = [
    pytest.param((2, 3, 32, 32, 8, 33, "ratio0.75", True, 5), id="B2-32-p8-D33-chunk5"),
    pytest.param((2, 3, 16, 16, 4, 17, "rows", False, 7), id="B2-16-p4-D17-rows-nobias"),
    pytest.param((2, 3, 16, 16, 8, 16, "none", True, 4096), id="B2-p8-D16-nomask"),
]


def make_case(case, dtype):
    b, c, h, w, p, dim, kind, with_bias, chunk = case
    length, pdim = (h // p) * (w // p), p * p * c
    hidden = torch.randn(b, length, dim).to(dtype)
    weight = (torch.randn(pdim, dim) / dim**0.5).to(dtype)
    bias = (0.1 * torch.randn(pdim)).to(dtype) if with_bias else None
    imgs = make_imgs(b, c, h, w, dtype)
    mask = make_mask(kind, b, length, dtype)
    return hidden, weight, bias, imgs, mask, p, chunk


def reference(hidden, weight, bias, imgs, mask, p, norm_pix, dtype=None):
    """Loss and (grad h, grad weight, grad bias) of the reference, run in ``dtype`` (default: the inputs')."""
    hr, wr = leaf(hidden, "cpu", dtype), leaf(weight, "cpu", dtype)
    br = leaf(bias, "cpu", dtype) if bias is not None else None
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    loss = fused_head_masked_mse_ref(hr, wr, br, cast(imgs), cast(mask), p, norm_pix)
    loss.backward()
    return loss.detach(), {"grad h": hr.grad, "grad weight": wr.grad, "grad bias": br.grad if br is not None else None}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED, FUSED_BACKEND_NAMES))
def test_fused_head_masked_mse_matches_reference(backend, case, norm_pix_loss, dtype, device):
    hidden, weight, bias, imgs, mask, p, chunk = make_case(case, dtype)
    hd, wd = leaf(hidden, device), leaf(weight, device)
    bd = leaf(bias, device) if bias is not None else None
    loss = run_op(backend, hd, wd, bd, imgs.to(device), mask.to(device), p, norm_pix_loss, chunk_size=chunk)
    assert loss.shape == () and loss.device.type == device.type
    # same dtype contract as masked_patch_mse(imgs, F.linear(h, weight, bias), ...)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    loss.backward()
    grads = {"grad h": hd.grad, "grad weight": wd.grad, "grad bias": bd.grad if bd is not None else None}
    for name, grad in grads.items():
        if grad is not None:
            assert grad.dtype == dtype, name

    exact_loss, exact_grads = reference(hidden, weight, bias, imgs, mask, p, norm_pix_loss, torch.float64)
    if dtype in LOW_PRECISION:
        loss32, grads32 = reference(hidden, weight, bias, imgs, mask, p, norm_pix_loss, torch.float32)
        loss_lowp, grads_lowp = reference(hidden, weight, bias, imgs, mask, p, norm_pix_loss)
        # pred = F.linear(h, weight, bias) is computed in the low dtype (as under autocast), so the loss and
        # every gradient carry its rounding errors, as random as the low-precision reference's own: the
        # tensor-wide rule applies, and the scalar loss gets one rounding of the low dtype as atol
        atol = torch.finfo(dtype).eps * abs(float(loss32))
        assert_close_to_ref(loss, loss32, loss_lowp, name="loss", atol=atol)
        for name, grad in grads.items():
            if grad is not None:
                assert_close_to_ref(grad, grads32[name], grads_lowp[name], name=name, elementwise=False)
    else:
        assert_close_to_ref(loss, exact_loss, name="loss")
        for name, grad in grads.items():
            if grad is not None:
                assert_close_to_ref(grad, exact_grads[name], name=name)
    if case[6] == "none":
        assert loss.item() == 0.0
        assert all(bool((g == 0).all()) for g in grads.values() if g is not None)


@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_head_equals_head_then_masked_patch_mse(backend, norm_pix_loss, device):
    """The documented identity: fused_head_masked_mse == masked_patch_mse(imgs, F.linear(h, W, b), ...)."""
    hidden, weight, bias, imgs, mask, p, _ = make_case((2, 3, 32, 32, 8, 24, "ratio0.75", True, 4096), torch.float32)
    imgs, mask = imgs.to(device), mask.to(device)
    fused = [leaf(t, device) for t in (hidden, weight, bias)]
    loss = run_op(backend, *fused, imgs, mask, p, norm_pix_loss, chunk_size=11)
    loss.backward()
    unfused = [leaf(t, device) for t in (hidden, weight, bias)]
    pred = F.linear(*unfused)
    expected = ferfast.masked_patch_mse(imgs, pred, mask, p, norm_pix_loss, backend="reference")
    expected.backward()
    assert_close_to_ref(loss, expected.double(), name="loss")
    for name, a, b in zip(("grad h", "grad weight", "grad bias"), fused, unfused):
        assert_close_to_ref(a.grad, b.grad.double(), name=name)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_head_chunk_size_does_not_change_the_result(backend, device):
    hidden, weight, bias, imgs, mask, p, _ = make_case((2, 3, 32, 32, 8, 16, "ratio0.75", True, 0), torch.float32)
    args = [t.to(device) for t in (hidden, weight, bias, imgs, mask)]
    losses = [run_op(backend, *args, p, True, chunk_size=chunk) for chunk in (1, 3, 24, 4096)]
    for loss in losses[1:]:
        assert_close_to_ref(loss, losses[0].double(), name="loss across chunk sizes")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_head_backward_scales_and_respects_requires_grad(backend, device):
    hidden, weight, bias, imgs, mask, p, _ = make_case((2, 3, 16, 16, 4, 12, "ratio0.75", True, 4096), torch.float32)
    _, exact = reference(hidden, weight, bias, imgs, mask, p, False, torch.float64)
    imgs, mask = imgs.to(device), mask.to(device)
    hd, wd, bd = leaf(hidden, device), leaf(weight, device), leaf(bias, device)
    (-2.0 * run_op(backend, hd, wd, bd, imgs, mask, p)).backward()
    for name, grad in zip(("grad h", "grad weight", "grad bias"), (hd.grad, wd.grad, bd.grad)):
        assert_close_to_ref(grad, -2.0 * exact[name], name=name + " of -2*loss")
    # a frozen head: only h gets a gradient
    hd = leaf(hidden, device)
    wd, bd = weight.to(device), bias.to(device)
    run_op(backend, hd, wd, bd, imgs, mask, p).backward()
    assert_close_to_ref(hd.grad, exact["grad h"], name="grad h (frozen head)")
    # nothing requires grad: a plain loss
    loss = run_op(backend, hidden.to(device), wd, bd, imgs, mask, p)
    assert not loss.requires_grad


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_head_non_contiguous_inputs(backend, device):
    hidden, weight, bias, imgs, mask, p, _ = make_case((2, 3, 16, 16, 4, 12, "ratio0.75", True, 4096), torch.float32)
    exact_loss, exact = reference(hidden, weight, bias, imgs, mask, p, True, torch.float64)
    h_base = leaf(torch.stack([hidden, hidden], dim=-1), device)
    w_t = leaf(weight.t().contiguous(), device)
    views = (h_base[..., 0], w_t.t(), imgs.to(device).contiguous(memory_format=torch.channels_last))
    assert not any(v.is_contiguous() for v in views)
    bd = leaf(bias, device)
    loss = run_op(backend, views[0], views[1], bd, views[2], non_contiguous(mask).to(device), p, True)
    loss.backward()
    assert_close_to_ref(loss, exact_loss, name="loss")
    assert_close_to_ref(h_base.grad[..., 0], exact["grad h"], name="grad h")
    assert_close_to_ref(w_t.grad.t(), exact["grad weight"], name="grad weight")
    assert_close_to_ref(bd.grad, exact["grad bias"], name="grad bias")


# ---- argument checks ---------------------------------------------------------------------------

H = torch.randn(2, 4, 6)
W = torch.randn(48, 6)
B = torch.randn(48)
IMGS = torch.randn(2, 3, 8, 8)
MASK = torch.ones(2, 4)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        pytest.param((H.tolist(), W, B, IMGS, MASK, 4), {}, TypeError, "h", id="list-h"),
        pytest.param((H, W.numpy(), B, IMGS, MASK, 4), {}, TypeError, "weight", id="numpy-weight"),
        pytest.param((H, W, B.tolist(), IMGS, MASK, 4), {}, TypeError, "bias", id="list-bias"),
        pytest.param((H.long(), W, B, IMGS, MASK, 4), {}, TypeError, "h", id="int-h"),
        pytest.param((H, W, B, IMGS.to(torch.uint8), MASK, 4), {}, TypeError, "imgs", id="uint8-imgs"),
        pytest.param((H[0], W, B, IMGS, MASK, 4), {}, ValueError, "h", id="rank2-h"),
        pytest.param((H[:, :3], W, B, IMGS, MASK, 4), {}, ValueError, "h", id="h-wrong-L"),
        pytest.param((H[:1], W, B, IMGS, MASK, 4), {}, ValueError, "h", id="h-batch-mismatch"),
        pytest.param((H, W[0], B, IMGS, MASK, 4), {}, ValueError, "weight", id="rank1-weight"),
        pytest.param((H, W[:47], B, IMGS, MASK, 4), {}, ValueError, "weight", id="weight-wrong-patch-dim"),
        pytest.param((H, W[:, :5], B, IMGS, MASK, 4), {}, ValueError, "weight", id="weight-wrong-D"),
        pytest.param((H, W, B[:47], IMGS, MASK, 4), {}, ValueError, "bias", id="bias-wrong-shape"),
        pytest.param((H, W, B, IMGS, MASK[:1], 4), {}, ValueError, "mask", id="mask-batch-mismatch"),
        pytest.param((H, W, B, IMGS, MASK, 3), {}, ValueError, "divisible by patch_size", id="not-divisible"),
        pytest.param((H, W, B, IMGS, MASK, 0), {}, ValueError, "patch_size", id="patch0"),
        pytest.param((H, W, B, IMGS, MASK, 4), {"chunk_size": 0}, ValueError, "chunk_size", id="chunk0"),
        pytest.param((H.to("meta"), W, B, IMGS, MASK, 4), {}, ValueError, "h", id="meta-h"),
        pytest.param((H, W, B, IMGS, MASK.to("meta"), 4), {}, ValueError, "mask", id="meta-mask"),
        pytest.param((H, W.to("meta"), B, IMGS, MASK, 4), {}, ValueError, "weight", id="meta-weight"),
        pytest.param((H, W, B.to("meta"), IMGS, MASK, 4), {}, ValueError, "bias", id="meta-bias"),
        pytest.param(
            (torch.randn(2, 16, 3), torch.randn(1, 3), None, torch.randn(2, 1, 4, 4), torch.ones(2, 16), 1),
            {"norm_pix_loss": True},
            ValueError,
            "norm_pix_loss",
            id="norm-pix-needs-2-values",
        ),
        *(
            [pytest.param((H, W, B, IMGS, MASK, 4), {"backend": "nope"}, ValueError, "backend", id="bad-backend")]
            if TAKES_BACKEND
            else []
        ),
    ],
)
def test_fused_head_masked_mse_rejects_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        ferfast.fused_head_masked_mse(*args, **kwargs)
