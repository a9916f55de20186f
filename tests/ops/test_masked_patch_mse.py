"""masked_patch_mse: MAE's forward_loss (norm_pix_loss on and off) and its gradient in pred."""

import math

import pytest
import torch

import ferfast
from ferfast.reference import masked_patch_mse_ref, patchify_ref
from tests.utils import (
    BACKENDS,
    DTYPES,
    LOW_PRECISION,
    assert_close_to_ref,
    backend_cases,
    backend_device,
    backend_unavailable_reason,
    is_interpreted,
    leaf,
    make_imgs,
    make_mask,
    non_contiguous,
)

# (B, C, H, W, patch, mask kind): MAE's 224/16, ratio 0.99, rows fully masked or not at all,
# odd patch dim (p=7, C=1), non-square images with weighted masks, an empty mask, a full one,
# the smallest patch norm_pix allows (p=1, C=2), and a zero-variance patch.
CASES = [
    pytest.param((1, 3, 224, 224, 16, "ratio0.75"), id="B1-224-p16-r0.75"),
    pytest.param((2, 3, 32, 32, 8, "ratio0.99"), id="B2-32-p8-r0.99"),
    pytest.param((3, 3, 32, 32, 4, "rows"), id="B3-32-p4-rows"),
    pytest.param((3, 1, 28, 28, 7, "ratio0.75"), id="B3-C1-28-p7-r0.75"),
    pytest.param((2, 3, 24, 40, 4, "weights"), id="B2-24x40-p4-weights"),
    pytest.param((2, 3, 16, 16, 8, "none"), id="B2-16-p8-nomask"),
    pytest.param((2, 3, 16, 16, 8, "all"), id="B2-16-p8-allmasked"),
    pytest.param((2, 2, 4, 4, 1, "ratio0.5"), id="B2-C2-4-p1-r0.5"),
    pytest.param((2, 3, 16, 16, 4, "const"), id="B2-16-p4-constpatch"),
]
CASES_INTERPRETED = [
    pytest.param((1, 3, 32, 32, 8, "ratio0.75"), id="B1-32-p8-r0.75"),
    pytest.param((2, 3, 32, 32, 4, "rows"), id="B2-32-p4-rows"),
    pytest.param((2, 1, 12, 20, 4, "weights"), id="B2-C1-12x20-p4-weights"),
    pytest.param((2, 3, 16, 16, 8, "none"), id="B2-16-p8-nomask"),
    pytest.param((2, 2, 4, 4, 1, "ratio0.5"), id="B2-C2-4-p1-r0.5"),
    pytest.param((1, 3, 16, 16, 4, "const"), id="B1-16-p4-constpatch"),
]


def make_case(case, dtype, mask_dtype=None):
    b, c, h, w, p, kind = case
    length, pdim = (h // p) * (w // p), p * p * c
    imgs = make_imgs(b, c, h, w, dtype, constant_patch=p if kind == "const" else 0)
    pred = torch.randn(b, length, pdim).to(dtype)
    mask = make_mask("ratio0.75" if kind == "const" else kind, b, length, mask_dtype or dtype)
    if kind == "const":
        mask[:, 0] = 1  # the constant patch is in the loss
    return imgs, pred, mask, p


def reference(imgs, pred, mask, p, norm_pix, dtype=None):
    """Loss and grad(pred) of the reference, run in ``dtype`` (default: the inputs' own)."""
    pred_ref = leaf(pred, "cpu", dtype)
    loss = masked_patch_mse_ref(imgs.to(dtype or imgs.dtype), pred_ref, mask.to(dtype or mask.dtype), p, norm_pix)
    loss.backward()
    return loss.detach(), pred_ref.grad


def check_against_reference(loss, grad, imgs, pred, mask, p, norm_pix, lowp: bool):
    exact_loss, exact_grad = reference(imgs, pred, mask, p, norm_pix, torch.float64)
    if lowp:
        ref32 = reference(imgs, pred, mask, p, norm_pix, torch.float32)
        ref_lowp = reference(imgs, pred, mask, p, norm_pix)
        assert_close_to_ref(loss, ref32[0], ref_lowp[0], name="loss")
        assert_close_to_ref(grad, ref32[1], ref_lowp[1], name="grad pred")
        # the loss is accumulated and returned in fp32: far better than the low-precision rule demands
        assert_close_to_ref(loss, exact_loss, name="loss (fp32 accumulation)", rtol=1e-4)
    else:
        assert_close_to_ref(loss, exact_loss, name="loss")
        assert_close_to_ref(grad, exact_grad, name="grad pred")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED))
def test_masked_patch_mse_matches_reference(backend, case, norm_pix_loss, dtype, device):
    imgs, pred, mask, p = make_case(case, dtype)
    pred_d = leaf(pred, device)
    loss = ferfast.masked_patch_mse(imgs.to(device), pred_d, mask.to(device), p, norm_pix_loss, backend=backend)
    assert loss.shape == () and loss.device.type == device.type
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    loss.backward()
    assert pred_d.grad.dtype == dtype
    check_against_reference(loss, pred_d.grad, imgs, pred, mask, p, norm_pix_loss, dtype in LOW_PRECISION)


@pytest.mark.parametrize(
    ("imgs_dtype", "pred_dtype", "mask_dtype"),
    [
        (torch.float32, torch.bfloat16, torch.float32),  # autocast: fp32 images, bf16 decoder output
        (torch.float32, torch.float16, torch.bool),
        (torch.bfloat16, torch.float32, torch.bfloat16),
        (torch.float16, torch.float16, torch.float32),
        (torch.float32, torch.float64, torch.float32),
    ],
    ids=["imgs32-pred16b-mask32", "imgs32-pred16-maskbool", "imgs16b-pred32", "mask32-with-fp16", "pred64"],
)
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_patch_mse_mixed_dtypes(backend, norm_pix_loss, imgs_dtype, pred_dtype, mask_dtype, device):
    case = (2, 3, 16, 16, 4, "ratio0.75") if is_interpreted(backend) else (2, 3, 64, 64, 8, "ratio0.75")
    imgs, pred, mask, p = make_case(case, torch.float32)
    imgs, pred, mask = imgs.to(imgs_dtype), pred.to(pred_dtype), mask.to(mask_dtype)
    pred_d = leaf(pred, device)
    loss = ferfast.masked_patch_mse(imgs.to(device), pred_d, mask.to(device), p, norm_pix_loss, backend=backend)
    loss.backward()
    wide = torch.float64 in (imgs_dtype, pred_dtype)
    assert loss.dtype == (torch.float64 if wide else torch.float32)
    assert pred_d.grad.dtype == pred_dtype
    # compared with the exact loss of these very input values: math is fp32 (or fp64), the
    # gradient is rounded once to pred's dtype
    exact_loss, exact_grad = reference(imgs, pred, mask, p, norm_pix_loss, torch.float64)
    assert_close_to_ref(loss, exact_loss, name="loss", rtol=1e-10 if wide else 1e-5)
    if pred_dtype in LOW_PRECISION:  # the best a low-precision gradient can be: the exact one, rounded once
        assert_close_to_ref(pred_d.grad, exact_grad, exact_grad.to(pred_dtype), name="grad pred")
    else:
        assert_close_to_ref(pred_d.grad, exact_grad, name="grad pred")


@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_patch_mse_empty_mask_gives_zero(backend, norm_pix_loss, device):
    """Documented deviation: MAE's (loss*mask).sum()/mask.sum() is 0/0 = NaN; ferfast returns 0 and zero grads."""
    imgs, pred, _, p = make_case((2, 3, 16, 16, 4, "none"), torch.float32)
    mask = torch.zeros(2, 16)
    pred_d = leaf(pred, device)
    loss = ferfast.masked_patch_mse(imgs.to(device), pred_d, mask.to(device), p, norm_pix_loss, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(pred_d.grad, torch.zeros_like(pred_d))
    assert maes_forward_loss(imgs, pred, mask, p, norm_pix_loss).isnan()  # what MAE itself gives


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_patch_mse_backward_scales_the_stored_gradient(backend, device):
    """The gradient is computed in forward; backward must still multiply it by the incoming gradient."""
    case = (2, 3, 16, 16, 4, "ratio0.75")
    imgs, pred, mask, p = make_case(case, torch.float32)
    _, exact_grad = reference(imgs, pred, mask, p, True, torch.float64)
    imgs, mask = imgs.to(device), mask.to(device)

    pred_d = leaf(pred, device)
    (3.0 * ferfast.masked_patch_mse(imgs, pred_d, mask, p, True, backend=backend)).backward()
    assert_close_to_ref(pred_d.grad, 3.0 * exact_grad, name="grad of 3*loss")

    pred_d = leaf(pred, device)
    loss = ferfast.masked_patch_mse(imgs, pred_d, mask, p, True, backend=backend)
    (grad,) = torch.autograd.grad(loss, pred_d, grad_outputs=torch.tensor(-0.5, device=device))
    assert_close_to_ref(grad, -0.5 * exact_grad, name="grad with grad_output -0.5")

    pred_d = leaf(pred, device)
    loss = ferfast.masked_patch_mse(imgs, pred_d, mask, p, True, backend=backend)
    (loss + loss).backward()  # the same stored gradient used twice
    assert_close_to_ref(pred_d.grad, 2.0 * exact_grad, name="grad of loss + loss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_patch_mse_without_grad(backend, device):
    """Under no_grad (or for a pred without grad) the loss is the same and no gradient is produced."""
    imgs, pred, mask, p = make_case((2, 3, 16, 16, 4, "ratio0.75"), torch.float32)
    exact_loss, _ = reference(imgs, pred, mask, p, False, torch.float64)
    imgs, pred, mask = imgs.to(device), pred.to(device), mask.to(device)
    loss = ferfast.masked_patch_mse(imgs, pred, mask, p, backend=backend)
    assert not loss.requires_grad
    assert_close_to_ref(loss, exact_loss, name="loss (pred without grad)")
    with torch.no_grad():
        loss = ferfast.masked_patch_mse(imgs, pred.requires_grad_(True), mask, p, backend=backend)
    assert not loss.requires_grad
    assert_close_to_ref(loss, exact_loss, name="loss (no_grad)")


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_masked_patch_mse_imgs_and_mask_get_no_gradient(backend, device):
    """``imgs`` is the target and ``mask`` the weights: no gradient flows into them, on any backend."""
    imgs, pred, mask, p = make_case((2, 3, 16, 16, 4, "weights"), torch.float32)
    imgs_d, mask_d, pred_d = leaf(imgs, device), leaf(mask, device), leaf(pred, device)
    ferfast.masked_patch_mse(imgs_d, pred_d, mask_d, p, True, backend=backend).backward()
    assert imgs_d.grad is None and mask_d.grad is None
    assert pred_d.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_patch_mse_non_contiguous_inputs(backend, device):
    b, c, h, w, p = (2, 3, 16, 16, 4) if is_interpreted(backend) else (2, 3, 32, 48, 8)
    imgs, pred, mask, _ = make_case((b, c, h, w, p, "ratio0.75"), torch.float32)
    exact_loss, exact_grad = reference(imgs, pred, mask, p, True, torch.float64)
    pred_base = leaf(torch.stack([pred, pred], dim=-1), device)
    imgs_cl = imgs.to(device).contiguous(memory_format=torch.channels_last)
    pred_view, mask_view = pred_base[..., 0], non_contiguous(mask).to(device)
    assert not (imgs_cl.is_contiguous() or pred_view.is_contiguous() or mask_view.is_contiguous())
    loss = ferfast.masked_patch_mse(imgs_cl, pred_view, mask_view, p, True, backend=backend)
    loss.backward()
    assert_close_to_ref(loss, exact_loss, name="loss")
    assert_close_to_ref(pred_base.grad[..., 0], exact_grad, name="grad pred")
    assert bool((pred_base.grad[..., 1] == 0).all())


# ---- MAE's semantics, by hand -------------------------------------------------------------------


def maes_forward_loss(imgs, pred, mask, p, norm_pix_loss):
    """MAE's ``models_mae.py:forward_loss`` (with its ``patchify``), transcribed literally."""
    n, c = imgs.shape[0], imgs.shape[1]
    h, w = imgs.shape[2] // p, imgs.shape[3] // p
    x = imgs.reshape(shape=(n, c, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    target = x.reshape(shape=(n, h * w, p**2 * c))
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
    loss = (loss * mask).sum() / mask.sum()  # mean loss on removed patches
    return loss


def test_reference_matches_mae_by_hand():
    """A 1-channel 2x4 image pair with 2x2 patches, every number worked out by hand.

    Patches (nhwpqc = row-major within the patch for C=1): image 0 -> [1,2,5,6], [3,4,7,8];
    image 1 -> [0,0,0,4], [2,2,2,2]. Masked: (0,1) and (1,0) and (1,1); pred is all ones.
    """
    imgs = torch.tensor([[[[1.0, 2, 3, 4], [5, 6, 7, 8]]], [[[0.0, 0, 2, 2], [0, 4, 2, 2]]]], dtype=torch.float64)
    pred = torch.ones(2, 2, 4, dtype=torch.float64)
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert patchify_ref(imgs, 2).tolist() == [[[1, 2, 5, 6], [3, 4, 7, 8]], [[0, 0, 0, 4], [2, 2, 2, 2]]]

    # plain: per-patch MSE against pred = 1, then the mean over the 3 masked patches of the batch
    mse = {(0, 1): (4 + 9 + 36 + 49) / 4, (1, 0): (1 + 1 + 1 + 9) / 4, (1, 1): (1 + 1 + 1 + 1) / 4}
    plain = sum(mse.values()) / 3

    # norm_pix: mean, *unbiased* variance (divide by n-1 = 3), then (t - mean) / sqrt(var + 1e-6)
    def normalised(patch):
        mean = sum(patch) / 4
        var = sum((t - mean) ** 2 for t in patch) / 3
        return [(t - mean) / math.sqrt(var + 1e-6) for t in patch]

    def patch_mse(target):
        return sum((1 - t) ** 2 for t in target) / 4

    normed = (patch_mse(normalised([3, 4, 7, 8])) + patch_mse(normalised([0, 0, 0, 4])) + patch_mse([0.0] * 4)) / 3
    # a constant patch has var 0: it normalises to 0 (not NaN), so its MSE against 1 is exactly 1
    assert patch_mse(normalised([2, 2, 2, 2])) == 1.0

    for norm_pix, expected in ((False, plain), (True, normed)):
        ref = masked_patch_mse_ref(imgs, pred, mask, 2, norm_pix)
        assert ref.item() == pytest.approx(expected, rel=1e-12)
        assert maes_forward_loss(imgs, pred, mask, 2, norm_pix).item() == pytest.approx(expected, rel=1e-12)
        if backend_unavailable_reason("cpu") is None:
            got = ferfast.masked_patch_mse(imgs, pred, mask, 2, norm_pix, backend="cpu")
            assert got.item() == pytest.approx(expected, rel=1e-12)


def test_loss_is_normalised_over_the_whole_batch_not_per_image():
    """(loss*mask).sum()/mask.sum(): an image with more masked patches weighs more."""
    imgs = torch.zeros(2, 1, 2, 4, dtype=torch.float64)
    pred = torch.zeros(2, 2, 4, dtype=torch.float64)
    pred[0] = 1.0  # image 0: MSE 1 on each patch; image 1: MSE 0
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    ref = masked_patch_mse_ref(imgs, pred, mask, 2)
    assert ref.item() == pytest.approx(1 / 3)  # a per-image mean would give (1 + 0) / 2
    assert maes_forward_loss(imgs, pred, mask, 2, False).item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_equals_mae_transcription(norm_pix_loss, dtype):
    imgs, pred, mask, p = make_case((3, 3, 32, 32, 8, "ratio0.75"), dtype)
    expected = maes_forward_loss(imgs, pred, mask, p, norm_pix_loss)
    assert_close_to_ref(masked_patch_mse_ref(imgs, pred, mask, p, norm_pix_loss), expected, name="reference")


# ---- the module -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_masked_patch_mse_loss_module(backend):
    device = backend_device(backend) if backend is not None else torch.device("cpu")
    criterion = ferfast.MaskedPatchMSELoss(patch_size=4, norm_pix_loss=True, backend=backend)
    assert isinstance(criterion, torch.nn.Module)
    assert "patch_size=4" in repr(criterion) and "norm_pix_loss=True" in repr(criterion)
    assert list(criterion.parameters()) == []
    imgs, pred, mask, p = make_case((2, 3, 16, 16, 4, "ratio0.75"), torch.float32)
    pred_d = leaf(pred, device)
    loss = criterion(imgs.to(device), pred_d, mask.to(device).bool())
    loss.backward()
    exact_loss, exact_grad = reference(imgs, pred, mask, p, True, torch.float64)
    assert_close_to_ref(loss, exact_loss, name="module loss")
    assert_close_to_ref(pred_d.grad, exact_grad, name="module grad pred")
    functional = ferfast.masked_patch_mse(imgs.to(device), pred.to(device), mask.to(device), 4, True, backend=backend)
    assert torch.equal(loss.detach(), functional)


@pytest.mark.parametrize("patch_size", [0, -1, 2.5, True, "4"])
def test_masked_patch_mse_loss_module_rejects_bad_patch_size(patch_size):
    with pytest.raises(ValueError, match="patch_size"):
        ferfast.MaskedPatchMSELoss(patch_size)


def test_masked_patch_mse_loss_module_plain_default():
    criterion = ferfast.MaskedPatchMSELoss(8)
    assert criterion.norm_pix_loss is False and criterion.backend is None
    imgs, pred, mask, p = make_case((1, 3, 16, 16, 8, "ratio0.75"), torch.float32)
    exact_loss, _ = reference(imgs, pred, mask, p, False, torch.float64)
    assert_close_to_ref(criterion(imgs, pred, mask), exact_loss, name="loss")


# ---- gradcheck, registration, argument checks ---------------------------------------------------


@pytest.mark.ext
@pytest.mark.parametrize("mask_kind", ["ratio0.5", "weights", "none"])
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
def test_gradcheck_native(norm_pix_loss, mask_kind):
    backend_device("cpu")
    imgs = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    pred = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = make_mask(mask_kind, 2, 4, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: ferfast.masked_patch_mse(imgs, x, mask, 2, norm_pix_loss, backend="cpu"), (pred,)
    )


def _opcheck_samples(device, dtype=torch.float32):
    imgs, pred, mask, p = make_case((2, 3, 16, 16, 4, "ratio0.75"), dtype)
    imgs, pred, mask = imgs.to(device), pred.to(device), mask.to(device)
    samples = []
    for norm_pix in (False, True):
        samples.append((imgs, pred.clone().requires_grad_(True), mask, p, norm_pix, True))
    samples.append((imgs, pred, mask, p, False, False))
    samples.append((imgs, pred, torch.zeros_like(mask), p, True, True))
    return samples


@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_native(dtype):
    device = backend_device("cpu")
    for args in _opcheck_samples(device, dtype):
        torch.library.opcheck(torch.ops.ferfast.masked_patch_mse.default, args)


@pytest.mark.triton
def test_opcheck_triton():
    device = backend_device("triton")
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.ferfast_triton.masked_patch_mse.default, args)


IMGS = torch.randn(2, 3, 8, 8)
PRED = torch.randn(2, 4, 48)
MASK = torch.ones(2, 4)


@pytest.mark.parametrize(
    ("imgs", "pred", "mask", "kwargs", "error", "match"),
    [
        pytest.param(IMGS.tolist(), PRED, MASK, {}, TypeError, "imgs", id="list-imgs"),
        pytest.param(IMGS, None, MASK, {}, TypeError, "pred", id="none-pred"),
        pytest.param(IMGS, PRED, MASK.numpy(), {}, TypeError, "mask", id="numpy-mask"),
        pytest.param((IMGS * 255).to(torch.uint8), PRED, MASK, {}, TypeError, "imgs", id="uint8-imgs"),
        pytest.param(IMGS.int(), PRED, MASK, {}, TypeError, "imgs", id="int32-imgs"),
        pytest.param(IMGS, PRED.long(), MASK, {}, TypeError, "pred", id="int-pred"),
        pytest.param(IMGS, PRED, MASK.long(), {}, TypeError, "mask", id="int-mask"),
        pytest.param(IMGS[0], PRED, MASK, {}, ValueError, "imgs", id="rank3-imgs"),
        pytest.param(IMGS, PRED[0], MASK, {}, ValueError, "pred", id="rank2-pred"),
        pytest.param(IMGS, PRED, MASK[0], {}, ValueError, "mask", id="rank1-mask"),
        pytest.param(IMGS, PRED[:, :3], MASK, {}, ValueError, "pred", id="pred-wrong-L"),
        pytest.param(IMGS, PRED[..., :47], MASK, {}, ValueError, "pred", id="pred-wrong-patch-dim"),
        pytest.param(IMGS, PRED[:1], MASK, {}, ValueError, "pred", id="pred-batch-mismatch"),
        pytest.param(IMGS, PRED, MASK[:1], {}, ValueError, "mask", id="mask-batch-mismatch"),
        pytest.param(IMGS, PRED, MASK[:, :3], {}, ValueError, "mask", id="mask-wrong-L"),
        pytest.param(IMGS, PRED, MASK, {"patch_size": 3}, ValueError, "divisible by patch_size", id="not-divisible"),
        pytest.param(IMGS, PRED, MASK, {"patch_size": 0}, ValueError, "patch_size", id="patch0"),
        pytest.param(IMGS, PRED, MASK, {"patch_size": 4.0}, ValueError, "patch_size", id="patch-float"),
        pytest.param(IMGS, PRED.to("meta"), MASK, {}, ValueError, "pred", id="meta-pred"),
        pytest.param(IMGS, PRED, MASK.to("meta"), {}, ValueError, "mask", id="meta-mask"),
        pytest.param(IMGS.to("meta"), PRED, MASK, {}, ValueError, "imgs", id="meta-imgs"),
        pytest.param(IMGS, PRED, MASK, {"backend": "triton2"}, ValueError, "backend", id="bad-backend"),
        pytest.param(IMGS, PRED, MASK, {"backend": "cuda"}, ValueError, "backend", id="unavailable-backend"),
        pytest.param(
            torch.randn(2, 1, 4, 4),
            torch.randn(2, 16, 1),
            torch.ones(2, 16),
            {"patch_size": 1, "norm_pix_loss": True},
            ValueError,
            "norm_pix_loss",
            id="norm-pix-needs-2-values",
        ),
    ],
)
def test_masked_patch_mse_rejects_bad_input(imgs, pred, mask, kwargs, error, match):
    kwargs = {"patch_size": 4, **kwargs}
    patch_size = kwargs.pop("patch_size")
    with pytest.raises(error, match=match):
        ferfast.masked_patch_mse(imgs, pred, mask, patch_size, **kwargs)
