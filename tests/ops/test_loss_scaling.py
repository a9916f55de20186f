"""Fused-loss gradients under fp16 and a GradScaler's loss scale (65536), at ViT-B/16 pretraining scale.

The fused losses compute their gradients in the forward pass. Folding the normalising factor into that
stored low-precision tensor (``2 / (P * denom)`` is ~7e-8 at ViT-B/16 batch 256, fp16's subnormal range)
zeroed half of the fp16 MAE gradient, and scaling it by ``grad_loss`` in fp16 (65536 is above fp16's
largest finite value, 65504) made it inf. Here the backward of every fused loss, with fp16 inputs and
``(loss * 65536).backward()``, must give a finite gradient that is the exact one (the fp64 reference on
the same input values) to within fp16 rounding, with no zero where the exact scaled gradient is
representable.

Sizes: ``masked_patch_mse`` runs at ViT-B/16 batch 256 (pred ``[256, 196, 768]``, mask ratio 0.75) on the
reference and C++ backends (and CUDA); interpreted Triton (``TRITON_INTERPRET=1``, one Python-level program
per patch) runs batch 8 (~5 s; batch 256 would take minutes), where the folded factor (~2.2e-6) already
flushed fp16 and 65536 already overflowed. ``fused_head_masked_mse`` (plain torch, no backend choice) runs
its decoder head in fp16 (width 512) at batch 16: fp16 matmuls are slow on a CPU (batch 256 takes
minutes), and at batch 16 the old folded factor (~1.1e-6) still pushed ``grad_h`` into fp16's subnormals.
The logit losses (``facemix_loss``, ``fixmatch_loss``) run at batch 256 with 7 classes.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import ferfast
from ferfast._library import scale_grad_torch
from ferfast.reference import facemix_loss_ref, fixmatch_loss_ref, masked_patch_mse_ref
from tests.utils import BACKENDS, assert_identical, assert_verbose_allclose, backend_device, is_interpreted, leaf

SCALE = 65536.0  # torch.amp.GradScaler's initial scale
FP16 = torch.finfo(torch.float16)
ALL_BACKENDS = [pytest.param("reference", id="reference"), *BACKENDS]

# ViT-B/16 MAE pretraining: 224 x 224 RGB, patch 16 (L = 196, P = 768), mask ratio 0.75
IMG, PATCH, CHANNELS, MASK_RATIO = 224, 16, 3, 0.75
MSE_BATCH, MSE_BATCH_INTERPRETED = 256, 8
HEAD_BATCH, DECODER_DIM = 16, 512
LOGITS_BATCH, CLASSES = 256, 7


def mae_mask(batch: int, length: int) -> torch.Tensor:
    """``[B, L]`` float32 MAE mask (1 = removed): ``int(L * 0.75)`` random patches per image."""
    removed = length - int(length * (1 - MASK_RATIO))
    order = torch.rand(batch, length).argsort(dim=1)
    return (order < removed).float()


@functools.cache
def mse_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 images, fp16 predictions (an fp16-autocast decoder's output) and the mask, seeded."""
    gen = torch.Generator().manual_seed(batch)
    length, pdim = (IMG // PATCH) ** 2, PATCH * PATCH * CHANNELS
    imgs = torch.randn(batch, CHANNELS, IMG, IMG, generator=gen)
    pred = torch.randn(batch, length, pdim, generator=gen).half()
    torch.manual_seed(batch)
    return imgs, pred, mae_mask(batch, length)


@functools.cache
def exact_mse_grad(batch: int, norm_pix: bool) -> torch.Tensor:
    """``SCALE * d loss / d pred`` in fp64 on the same input values (the exact scaled gradient)."""
    imgs, pred, mask = mse_inputs(batch)
    pred64 = pred.double().requires_grad_()
    loss = masked_patch_mse_ref(imgs.double(), pred64, mask.double(), PATCH, norm_pix)
    (grad,) = torch.autograd.grad(loss * SCALE, pred64)
    return grad


@pytest.fixture(scope="module", autouse=True)
def _free_cached_tensors():
    """The ViT-B-sized inputs and fp64 gradients (~1 GB) live for this module only."""
    yield
    mse_inputs.cache_clear()
    exact_mse_grad.cache_clear()


def assert_scaled_fp16_grad(grad: torch.Tensor, exact: torch.Tensor, name: str, rounds: int = 2) -> None:
    """``grad`` (fp16, still times SCALE) is finite, has no spurious zero and is ``exact`` up to fp16 rounding.

    ``rounds`` fp16 roundings are allowed (the stored un-normalised gradient, then the scaled result), each
    half a unit in the last place (``eps / 2`` relative, or half the subnormal spacing near zero).
    """
    assert grad.dtype == torch.float16, name
    assert bool(torch.isfinite(grad).all()), f"{name}: {int((~torch.isfinite(grad)).sum())} non-finite entries"
    representable = exact.abs() >= FP16.smallest_normal * FP16.eps  # at least fp16's smallest subnormal
    spurious = int(((grad == 0) & representable).sum())
    assert spurious == 0, f"{name}: {spurious} zeros where the exact gradient is {exact[representable].abs().min():g}+"
    # fp16's subnormal spacing is smallest_normal * eps
    assert_verbose_allclose(grad, exact, rounds * FP16.eps / 2, rounds * FP16.smallest_normal * FP16.eps / 2, name=name)
    # and, unscaled, close to the exact gradient as a whole (what the optimiser sees after unscaling)
    unscaled, ref = grad.double() / SCALE, exact / SCALE
    assert float((unscaled - ref).norm() / ref.norm()) < 1e-3, name


@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_masked_patch_mse_fp16_loss_scaled_vit_b(backend, norm_pix_loss, device):
    batch = MSE_BATCH_INTERPRETED if is_interpreted(backend) else MSE_BATCH
    imgs, pred, mask = mse_inputs(batch)
    pred_d = leaf(pred, device)
    loss = ferfast.masked_patch_mse(imgs.to(device), pred_d, mask.to(device), PATCH, norm_pix_loss, backend=backend)
    (loss * SCALE).backward()
    assert_scaled_fp16_grad(pred_d.grad.cpu(), exact_mse_grad(batch, norm_pix_loss), f"{backend} grad pred")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["plain", "norm_pix"])
@pytest.mark.parametrize("device_name", DEVICES)
def test_fused_head_fp16_loss_scaled(device_name, norm_pix_loss):
    """``fused_head_masked_mse`` (plain torch, every device) with fp16 decoder tokens and head weights."""
    if device_name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    device = torch.device(device_name)
    gen = torch.Generator().manual_seed(1)
    length, pdim = (IMG // PATCH) ** 2, PATCH * PATCH * CHANNELS
    imgs = torch.randn(HEAD_BATCH, CHANNELS, IMG, IMG, generator=gen)
    h = torch.randn(HEAD_BATCH, length, DECODER_DIM, generator=gen).half()
    weight = (torch.randn(pdim, DECODER_DIM, generator=gen) * DECODER_DIM**-0.5).half()
    bias = (torch.randn(pdim, generator=gen) * 0.02).half()
    mask = mae_mask(HEAD_BATCH, length)
    leaves = [leaf(t, device) for t in (h, weight, bias)]
    loss = ferfast.fused_head_masked_mse(*leaves, imgs.to(device), mask.to(device), PATCH, norm_pix_loss)
    (loss * SCALE).backward()
    exact = [t.double().requires_grad_() for t in (h, weight, bias)]
    ref = masked_patch_mse_ref(imgs.double(), F.linear(*exact), mask.double(), PATCH, norm_pix_loss)
    grads = torch.autograd.grad(ref * SCALE, exact)
    for param, g, name in zip(leaves, grads, ("h", "weight", "bias"), strict=True):
        out = param.grad.cpu()
        assert out.dtype == torch.float16 and bool(torch.isfinite(out).all()), name
        spurious = int(((out == 0) & (g.abs() >= FP16.smallest_normal * FP16.eps)).sum())
        assert spurious == 0, f"grad {name}: {spurious} spurious zeros"
        # the head's matmuls run in fp16 (their rounding errors are as random as a reference's own): the
        # tensor as a whole, relative to the exact gradient
        rel = float((out.double() - g).norm() / g.norm())
        assert rel < 5e-3, f"grad {name}: relative error {rel:.3g}"


def logits_inputs(batch: int, classes: int) -> dict[str, torch.Tensor]:
    """fp16 logits (peaked enough that FixMatch keeps some rows), labels, Mixup targets, IoU, flip partners."""
    gen = torch.Generator().manual_seed(2)
    y = torch.randint(0, classes, (batch,), generator=gen)
    perm = torch.arange(batch - 1, -1, -1)
    lam = 0.3
    onehot = F.one_hot(y, classes).float() * 0.9 + 0.1 / classes
    return {
        "a": (torch.randn(batch, classes, generator=gen) * 3).half(),
        "b": (torch.randn(batch, classes, generator=gen) * 3).half(),
        "y": y,
        "y_soft": lam * onehot + (1 - lam) * onehot[perm],
        "iou": torch.rand(batch, generator=gen),
        "perm": perm,
    }


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_facemix_loss_fp16_loss_scaled(backend, device):
    t = logits_inputs(LOGITS_BATCH, CLASSES)
    real, mixed = (leaf(t[k], device) for k in ("a", "b"))
    others = [t[k].to(device) for k in ("y", "y_soft", "iou", "perm")]
    loss = ferfast.facemix_loss(real, mixed, *others, backend=backend)
    (loss * SCALE).backward()
    exact = [t[k].double().requires_grad_() for k in ("a", "b")]
    ref = facemix_loss_ref(*exact, t["y"], t["y_soft"].double(), t["iou"].double(), t["perm"])
    g_real, g_mixed = torch.autograd.grad(ref * SCALE, exact)
    assert_scaled_fp16_grad(real.grad.cpu(), g_real, f"{backend} grad logits_real")
    assert_scaled_fp16_grad(mixed.grad.cpu(), g_mixed, f"{backend} grad logits_mixed")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fixmatch_loss_fp16_loss_scaled(backend, device):
    t = logits_inputs(LOGITS_BATCH, CLASSES)
    strong = leaf(t["b"], device)
    loss, rate = ferfast.fixmatch_loss(t["a"].to(device), strong, 0.7, backend=backend)
    assert 0 < float(rate) < 1  # some rows confident, some not: both branches of the gradient are exercised
    (loss * SCALE).backward()
    exact = t["b"].double().requires_grad_()
    ref = fixmatch_loss_ref(t["a"].double(), exact, 0.7)[0]
    (g,) = torch.autograd.grad(ref * SCALE, exact)
    assert_scaled_fp16_grad(strong.grad.cpu(), g, f"{backend} grad logits_strong")


@pytest.mark.triton
@pytest.mark.parametrize(
    ("grad_dtype", "out_dtype"),
    [
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
        (torch.float32, torch.float16),  # the logit losses: float32 gradients, fp16 logits
        (torch.float32, torch.bfloat16),
        (torch.float64, torch.float64),
    ],
    ids=["fp16", "bf16", "fp32", "fp32-to-fp16", "fp32-to-bf16", "fp64"],
)
def test_triton_scale_grad_matches_torch(grad_dtype, out_dtype):
    """``ferfast_triton::_scale_grad`` (the losses' fused backward multiply) rounds exactly like the torch
    formula the other backends use: fp32 (fp64) product, one round-to-nearest-even to ``out_dtype``."""
    device = backend_device("triton")
    acc = torch.float64 if grad_dtype == torch.float64 else torch.float32
    grad = torch.randn(3, 1531) * torch.logspace(-9, 2, 1531)  # subnormal to large once scaled
    grad[0, :5] = torch.tensor([0.0, -0.0, 1.0, -1.0, 3.0])
    grad = grad.to(grad_dtype).to(device)
    for value in (SCALE * 2 / (768 * 37632), 1.0, SCALE / 256):
        scale = torch.tensor(value, dtype=acc, device=device)
        out = torch.ops.ferfast_triton._scale_grad(grad, scale, out_dtype)
        assert_identical(out.cpu(), scale_grad_torch(grad, scale, out_dtype).cpu(), name=f"scale {value:g}")
    torch.library.opcheck(torch.ops.ferfast_triton._scale_grad.default, (grad, scale, out_dtype))
