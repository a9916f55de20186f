"""torch.compile(fullgraph=True) traces the ops without a graph break (fake kernels, autograd registration)."""

import pytest
import torch

import ferfast
from tests.utils import BACKENDS, assert_close_to_ref, backend_device

PATCH = 4


def mae_step(noise, imgs, w_embed, cls_token, mask_token, w_pred, backend):
    """A tiny MAE forward touching all four ops: mask, embed visible patches, unshuffle, loss."""
    ids_keep, mask, ids_restore = ferfast.random_masking(noise, 0.75, backend=backend)
    patches = ferfast.patchify_gather(imgs, ids_keep, PATCH, backend=backend)
    tokens = patches @ w_embed
    tokens = torch.cat([cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    decoded = ferfast.unshuffle_tokens(tokens, mask_token, ids_restore, backend=backend)
    decoded = decoded + decoded.mean(dim=1, keepdim=True)  # a stand-in for attention: tokens see each other
    pred = decoded[:, 1:] @ w_pred
    loss = ferfast.masked_patch_mse(imgs, pred, mask, PATCH, norm_pix_loss=True, backend=backend)
    return loss, ids_keep, mask


def make_inputs():
    b, c, h, w, d = 2, 3, 8, 16, 8
    pdim = PATCH * PATCH * c
    noise = torch.rand(b, (h // PATCH) * (w // PATCH))
    imgs = torch.randn(b, c, h, w)
    params = [torch.randn(pdim, d) * 0.2, torch.randn(1, 1, d), torch.randn(1, 1, d), torch.randn(d, pdim) * 0.2]
    return noise, imgs, params


def run(fn, noise, imgs, params, backend):
    imgs = imgs.clone().requires_grad_(True)
    params = [p.clone().requires_grad_(True) for p in params]
    loss, ids_keep, mask = fn(noise, imgs, *params, backend)
    loss.backward()
    return loss.detach(), ids_keep, mask, [imgs.grad, *(p.grad for p in params)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_all_ops(backend):
    """Every backend that runs here; under the interpreter the Triton ops are plain custom ops, which
    torch.compile traces (and calls) like any other."""
    device = backend_device(backend)
    torch._dynamo.reset()
    noise, imgs, params = make_inputs()
    noise, imgs, params = noise.to(device), imgs.to(device), [p.to(device) for p in params]
    compiled = torch.compile(mae_step, fullgraph=True, dynamic=False)
    got = run(compiled, noise, imgs, params, backend)
    eager = run(mae_step, noise, imgs, params, backend)
    reference = run(mae_step, noise, imgs, params, "reference")
    for expected in (eager, reference):
        assert torch.equal(got[1], expected[1]) and torch.equal(got[2], expected[2])
        assert_close_to_ref(got[0], expected[0].double(), name="loss", rtol=1e-5)
    names = ["grad imgs", "grad w_embed", "grad cls_token", "grad mask_token", "grad w_pred"]
    for name, g, e in zip(names, got[3], eager[3]):
        assert g is not None and bool(g.abs().sum() > 0), name
        assert_close_to_ref(g, e.double(), name=name, rtol=1e-5)
    # the compiled function runs again on new values
    noise2 = torch.rand_like(noise)
    again = run(compiled, noise2, imgs, params, backend)
    assert_close_to_ref(again[0], run(mae_step, noise2, imgs, params, backend)[0].double(), name="loss", rtol=1e-5)
