"""Shapes that reach the kernels' multi-block and fallback paths.

The GPU kernels walk several patches or rows per block only when there are more of them than one
wave of blocks (MAE's ViT-B batch), and switch to loop kernels for patches over 4096 elements
(2048 in fp64) and rows over 4096 patches; the unshuffle backward has its own path for repeated
restore indices. The interpreted Triton backend gets none of the big cases (too slow there).
"""

import pytest
import torch

import ferfast
from ferfast.reference import masked_patch_mse_ref, patchify_gather_ref, random_masking_ref, unshuffle_tokens_ref
from tests.utils import assert_close_to_ref, assert_identical, backend_cases, backend_device, leaf


def _loss_and_grad(fn, imgs, pred, mask, p, norm_pix, device, dtype=None):
    pred_leaf = leaf(pred, device, dtype)
    loss = fn(imgs.to(device=device, dtype=dtype or imgs.dtype), pred_leaf, mask.to(device), p, norm_pix)
    (grad,) = torch.autograd.grad(loss, pred_leaf)
    return loss.detach().cpu(), grad.cpu()


@pytest.mark.parametrize(
    ("backend", "case"),
    backend_cases(
        [
            pytest.param((64, 3, 224, 224, 16, torch.float32), id="vitb-B64-fp32"),
            pytest.param((2, 5, 64, 64, 32, torch.float32), id="P5120-fp32"),
            pytest.param((2, 3, 64, 96, 32, torch.float64), id="P3072-fp64"),
        ],
        small=[],
    ),
)
@pytest.mark.parametrize("norm_pix", [False, True], ids=["plain", "norm_pix"])
def test_masked_patch_mse_large(backend, case, norm_pix):
    b, c, h, w, p, dtype = case
    device = backend_device(backend)
    length = (h // p) * (w // p)
    imgs = torch.randn(b, c, h, w, dtype=dtype)
    pred = torch.randn(b, length, p * p * c, dtype=dtype)
    _, mask, _ = random_masking_ref(torch.rand(b, length), 0.75)
    mask = mask.to(dtype)

    def op(*args):
        return ferfast.masked_patch_mse(*args, backend=backend)

    loss, grad = _loss_and_grad(op, imgs, pred, mask, p, norm_pix, device)
    exact_loss, exact_grad = _loss_and_grad(masked_patch_mse_ref, imgs, pred, mask, p, norm_pix, "cpu", torch.float64)
    assert loss.dtype == dtype
    assert_close_to_ref(loss, exact_loss, name="loss")
    assert_close_to_ref(grad, exact_grad, name="grad pred")


@pytest.mark.parametrize(("backend", "length"), backend_cases([5000], small=[]))
def test_random_masking_rows_longer_than_one_tile(backend, length):
    """L = 5000 > 4096 with many ties: indices identical to the stable argsort."""
    device = backend_device(backend)
    noise = (torch.rand(3, length) * 64).floor() / 64  # 64 distinct values: long runs of ties
    got = ferfast.random_masking(noise.to(device), 0.75, backend=backend)
    expected = random_masking_ref(noise, 0.75)
    for name, g, e in zip(("ids_keep", "mask", "ids_restore"), got, expected):
        assert_identical(g.cpu(), e, name=name)


@pytest.mark.parametrize(("backend", "batch"), backend_cases([64], small=[]))
def test_patchify_gather_vit_b_batch(backend, batch):
    """B=64 at 224/16: more kept patches than one wave of GPU blocks; forward and backward exact."""
    device = backend_device(backend)
    imgs = torch.randn(batch, 3, 224, 224)
    ids_keep, _, _ = random_masking_ref(torch.rand(batch, 196), 0.75)
    x = leaf(imgs, device)
    out = ferfast.patchify_gather(x, ids_keep.to(device), 16, backend=backend)
    x_ref = leaf(imgs, "cpu")
    expected = patchify_gather_ref(x_ref, ids_keep, 16)
    assert_identical(out.detach().cpu(), expected.detach(), name="patches")
    grad_out = torch.randn_like(expected)
    (grad,) = torch.autograd.grad(out, x, grad_out.to(device))
    (grad_ref,) = torch.autograd.grad(expected, x_ref, grad_out)
    assert_identical(grad.cpu(), grad_ref, name="grad imgs")


@pytest.mark.parametrize(("backend", "length"), backend_cases([196], small=[24]))
def test_unshuffle_tokens_repeated_restore_ids(backend, length):
    """ids_restore with repeats (not a permutation): gather semantics, so gradients accumulate."""
    device = backend_device(backend)
    b, d, k = 3, 40, length // 4
    gen = torch.Generator().manual_seed(7)
    ids_restore = torch.randint(0, length, (b, length), generator=gen)
    ids_restore[:, : length // 2] = ids_restore[:, :1]  # one visible token (or the mask token) used many times
    x = torch.randn(b, 1 + k, d)
    token = torch.randn(1, 1, d)
    x_leaf, token_leaf = leaf(x, device), leaf(token, device)
    out = ferfast.unshuffle_tokens(x_leaf, token_leaf, ids_restore.to(device), 1, backend=backend)
    x_ref, token_ref = leaf(x, "cpu", torch.float64), leaf(token, "cpu", torch.float64)
    expected = unshuffle_tokens_ref(x_ref, token_ref, ids_restore, 1)
    assert_close_to_ref(out.detach().cpu(), expected.detach(), name="tokens")
    grad_out = torch.randn(expected.shape, generator=gen)
    grads = torch.autograd.grad(out, (x_leaf, token_leaf), grad_out.to(device))
    grads_ref = torch.autograd.grad(expected, (x_ref, token_ref), grad_out.double())
    assert_close_to_ref(grads[0].cpu(), grads_ref[0], name="grad x")
    assert_close_to_ref(grads[1].cpu(), grads_ref[1], name="grad mask_token")
