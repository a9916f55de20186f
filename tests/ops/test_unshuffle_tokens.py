"""unshuffle_tokens: MAE's decoder input (visible tokens + mask tokens, unshuffled), forward and backward."""

import pytest
import torch

import ferfast
from ferfast.reference import num_kept, random_masking_ref, unshuffle_tokens_ref
from tests.utils import (
    BACKENDS,
    DTYPES,
    LOW_PRECISION,
    assert_close_to_ref,
    assert_identical,
    backend_cases,
    backend_device,
    is_interpreted,
    leaf,
    non_contiguous,
)

# (B, L, mask_ratio, D, num_prefix_tokens): MAE's 196 patches; no mask token at ratio 0; K = 1 and
# K = 0 (every token a mask token); odd D, D = 1, D above a power of two; no prefix, two prefixes.
CASES = [
    pytest.param((1, 196, 0.75, 64, 1), id="B1-L196-r0.75-D64"),
    pytest.param((2, 196, 0.0, 33, 1), id="B2-L196-r0-D33"),
    pytest.param((2, 196, 0.99, 7, 1), id="B2-L196-r0.99-D7"),
    pytest.param((3, 49, 0.99, 16, 0), id="B3-L49-r0.99-D16-noprefix"),
    pytest.param((2, 16, 0.75, 1, 2), id="B2-L16-r0.75-D1-prefix2"),
    pytest.param((4, 50, 0.5, 129, 1), id="B4-L50-r0.5-D129"),
]
CASES_INTERPRETED = [
    pytest.param((1, 16, 0.75, 7, 1), id="B1-L16-r0.75-D7"),
    pytest.param((2, 49, 0.99, 33, 0), id="B2-L49-r0.99-D33-noprefix"),
    pytest.param((2, 16, 0.0, 16, 1), id="B2-L16-r0-D16"),
    pytest.param((2, 10, 0.5, 5, 2), id="B2-L10-r0.5-D5-prefix2"),
]


def make_inputs(batch, length, mask_ratio, dim, prefix, dtype, token_dtype=None):
    k = num_kept(length, mask_ratio)
    ids_restore = random_masking_ref(torch.rand(batch, length), mask_ratio)[2]
    x = torch.randn(batch, prefix + k, dim).to(dtype)
    mask_token = torch.randn(1, 1, dim).to(token_dtype or dtype)  # MAE's parameter shape
    grad_out = torch.randn(batch, prefix + length, dim).to(dtype)
    return x, mask_token, ids_restore, grad_out


def reference_grads(x, mask_token, ids_restore, prefix, grad_out, dtype=None, token_dtype=None):
    """Forward output and (grad x, grad mask_token) of the reference, computed in ``dtype``."""
    xr = leaf(x, "cpu", dtype)
    tr = leaf(mask_token, "cpu", token_dtype or dtype)
    out = unshuffle_tokens_ref(xr, tr, ids_restore, prefix)
    out.backward(grad_out.to(out.dtype))
    return out, xr.grad, tr.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED))
def test_unshuffle_tokens_matches_reference(backend, case, dtype, device):
    batch, length, mask_ratio, dim, prefix = case
    x, mask_token, ids_restore, grad_out = make_inputs(batch, length, mask_ratio, dim, prefix, dtype)

    xd, td = leaf(x, device), leaf(mask_token, device)
    out = ferfast.unshuffle_tokens(xd, td, ids_restore.to(device), prefix, backend=backend)
    out.backward(grad_out.to(device))
    assert out.device.type == device.type

    ref, ref_gx, ref_gt = reference_grads(x, mask_token, ids_restore, prefix, grad_out)
    assert_identical(out, ref, name="tokens")  # a pure copy
    assert_identical(xd.grad, ref_gx, name="grad x")  # every visible token goes to exactly one place
    assert td.grad.shape == mask_token.shape and td.grad.dtype == dtype
    if dtype in LOW_PRECISION:  # grad mask_token is a sum over the mask tokens of the batch
        _, _, ref32_gt = reference_grads(x, mask_token, ids_restore, prefix, grad_out, torch.float32)
        assert_close_to_ref(td.grad, ref32_gt, ref_gt, name="grad mask_token")
    else:
        _, _, exact_gt = reference_grads(x, mask_token, ids_restore, prefix, grad_out, torch.float64)
        assert_close_to_ref(td.grad, exact_gt, name="grad mask_token")
    if mask_ratio == 0.0:
        assert bool((td.grad == 0).all())


@pytest.mark.parametrize(
    ("dtype", "token_dtype"),
    [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.bfloat16)],
    ids=["x-bf16-token-fp32", "x-fp16-token-fp32", "x-fp32-token-bf16"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unshuffle_tokens_mixed_dtypes(backend, dtype, token_dtype, device):
    """Under autocast the activations are low precision while the mask_token parameter stays fp32."""
    batch, length, dim = (2, 16, 12) if is_interpreted(backend) else (2, 196, 48)
    x, mask_token, ids_restore, grad_out = make_inputs(batch, length, 0.75, dim, 1, dtype, token_dtype)
    xd, td = leaf(x, device), leaf(mask_token, device)
    out = ferfast.unshuffle_tokens(xd, td, ids_restore.to(device), backend=backend)
    out.backward(grad_out.to(device))

    ref, ref_gx, ref_gt = reference_grads(x, mask_token, ids_restore, 1, grad_out, token_dtype=token_dtype)
    assert out.dtype == dtype
    assert_identical(out, ref, name="tokens")
    assert_identical(xd.grad, ref_gx, name="grad x")
    assert td.grad.dtype == token_dtype
    _, _, exact_gt = reference_grads(x, mask_token, ids_restore, 1, grad_out, torch.float64)
    if token_dtype in LOW_PRECISION:
        _, _, ref32_gt = reference_grads(x, mask_token, ids_restore, 1, grad_out, torch.float32)
        assert_close_to_ref(td.grad, ref32_gt, ref_gt, name="grad mask_token")
    else:  # an fp32 parameter gets its gradient summed in fp32 from the low-precision incoming gradient
        assert_close_to_ref(td.grad, exact_gt, name="grad mask_token")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unshuffle_tokens_non_contiguous_inputs(backend, device):
    batch, length, dim = (2, 16, 8) if is_interpreted(backend) else (3, 196, 32)
    x, mask_token, ids_restore, _ = make_inputs(batch, length, 0.75, dim, 1, torch.float32)
    x_base = leaf(torch.stack([x, x], dim=-1), device)
    t_base = leaf(torch.stack([mask_token.reshape(-1), mask_token.reshape(-1)], dim=-1), device)
    x_view, t_view = x_base[..., 0], t_base[:, 0]  # stride 2 in D
    x_t = leaf(x.transpose(1, 2).contiguous(), device).transpose(1, 2)  # stride L in D
    ids_view = non_contiguous(ids_restore).to(device)
    assert not (x_view.is_contiguous() or t_view.is_contiguous() or x_t.is_contiguous() or ids_view.is_contiguous())

    ref, ref_gx, ref_gt = reference_grads(x, mask_token, ids_restore, 1, torch.ones(batch, 1 + length, dim))
    for xv in (x_view, x_t):
        out = ferfast.unshuffle_tokens(xv, t_view, ids_view, backend=backend)
        assert_identical(out, ref, name="tokens")
    out = ferfast.unshuffle_tokens(x_view, t_view, ids_view, backend=backend)
    out.sum().backward()  # an expanded (stride 0) incoming gradient
    assert_identical(x_base.grad[..., 0], ref_gx, name="grad x")
    assert bool((x_base.grad[..., 1] == 0).all())
    assert_close_to_ref(t_base.grad[:, 0], ref_gt.reshape(-1).double(), name="grad mask_token")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unshuffle_tokens_hand_example(backend, device):
    """Two visible tokens, three mask tokens; output token l is visible token ids_restore[l] if < K."""
    x = torch.tensor([[[9.0], [10.0], [11.0]]])  # cls, visible 0, visible 1
    mask_token = torch.tensor([-1.0])
    ids_restore = torch.tensor([[3, 0, 2, 4, 1]])
    out = ferfast.unshuffle_tokens(x.to(device), mask_token.to(device), ids_restore.to(device), backend=backend)
    assert out.cpu().reshape(-1).tolist() == [9.0, -1.0, 10.0, -1.0, -1.0, 11.0]


@pytest.mark.ext
@pytest.mark.parametrize("prefix", [0, 1])
def test_gradcheck_native(prefix):
    backend_device("cpu")
    ids_restore = random_masking_ref(torch.rand(2, 6), 0.5)[2]
    x = torch.randn(2, prefix + 3, 5, dtype=torch.float64, requires_grad=True)
    mask_token = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, t: ferfast.unshuffle_tokens(a, t, ids_restore, prefix, backend="cpu"), (x, mask_token)
    )


# ---- registration, argument checks -------------------------------------------------------------


def _opcheck_samples(device, dtype=torch.float32):
    x, mask_token, ids_restore, grad_out = make_inputs(2, 16, 0.75, 7, 1, dtype)
    x, ids, grad_out = x.to(device), ids_restore.to(device), grad_out.to(device)
    token = mask_token.reshape(-1).to(device)
    return [
        ("unshuffle_tokens", (x.clone().requires_grad_(True), token.clone().requires_grad_(True), ids, 1)),
        ("unshuffle_tokens", (x[:, 1:], token, ids, 0)),
        ("_unshuffle_tokens_backward", (grad_out, ids, 1, 4)),
    ]


@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_native(dtype):
    device = backend_device("cpu")
    for name, args in _opcheck_samples(device, dtype):
        torch.library.opcheck(getattr(torch.ops.ferfast, name).default, args)


@pytest.mark.triton
@pytest.mark.parametrize("name", ["unshuffle_tokens", "_unshuffle_tokens_backward"])
def test_opcheck_triton(name):
    device = backend_device("triton")
    for op_name, args in _opcheck_samples(device):
        if op_name == name:
            torch.library.opcheck(getattr(torch.ops.ferfast_triton, name).default, args)


X = torch.randn(2, 3, 4)  # cls + 2 visible tokens, D = 4
TOKEN = torch.randn(4)
IDS = torch.tensor([[0, 2, 1, 3], [3, 1, 0, 2]])


@pytest.mark.parametrize(
    ("x", "mask_token", "ids_restore", "kwargs", "error", "match"),
    [
        pytest.param(X.tolist(), TOKEN, IDS, {}, TypeError, "x", id="list-x"),
        pytest.param(X, 0.0, IDS, {}, TypeError, "mask_token", id="float-token"),
        pytest.param(X, TOKEN, IDS.numpy(), {}, TypeError, "ids_restore", id="numpy-ids"),
        pytest.param(X[0], TOKEN, IDS, {}, ValueError, "x", id="rank2-x"),
        pytest.param(X.long(), TOKEN, IDS, {}, TypeError, "x", id="int-x"),
        pytest.param(X, TOKEN.long(), IDS, {}, TypeError, "mask_token", id="int-token"),
        pytest.param(X, torch.randn(5), IDS, {}, ValueError, "mask_token", id="token-wrong-D"),
        pytest.param(X, torch.randn(1, 1, 3), IDS, {}, ValueError, "mask_token", id="token-shape"),
        pytest.param(X, TOKEN, IDS.int(), {}, TypeError, "ids_restore", id="int32-ids"),
        pytest.param(X, TOKEN, IDS.float(), {}, TypeError, "ids_restore", id="float-ids"),
        pytest.param(X, TOKEN, IDS[0], {}, ValueError, "ids_restore", id="rank1-ids"),
        pytest.param(X, TOKEN, IDS[:1], {}, ValueError, "ids_restore", id="batch-mismatch"),
        pytest.param(X, TOKEN, IDS[:, :1], {}, ValueError, "ids_restore", id="more-visible-than-L"),
        pytest.param(X, TOKEN, IDS, {"num_prefix_tokens": 4}, ValueError, "num_prefix_tokens", id="prefix>N"),
        pytest.param(X, TOKEN, IDS, {"num_prefix_tokens": -1}, ValueError, "num_prefix_tokens", id="prefix-neg"),
        pytest.param(X, TOKEN, IDS, {"num_prefix_tokens": 1.0}, ValueError, "num_prefix_tokens", id="prefix-float"),
        pytest.param(X, TOKEN, IDS.to("meta"), {}, ValueError, "ids_restore", id="meta-ids"),
        pytest.param(X, TOKEN.to("meta"), IDS, {}, ValueError, "mask_token", id="meta-token"),
        pytest.param(X.to("meta"), TOKEN, IDS, {}, ValueError, "ids_restore", id="meta-x"),
        pytest.param(X, TOKEN, IDS, {"backend": "fused"}, ValueError, "backend", id="bad-backend"),
        pytest.param(X, TOKEN, IDS, {"backend": "cuda"}, ValueError, "backend", id="unavailable-backend"),
    ],
)
def test_unshuffle_tokens_rejects_bad_input(x, mask_token, ids_restore, kwargs, error, match):
    with pytest.raises(error, match=match):
        ferfast.unshuffle_tokens(x, mask_token, ids_restore, **kwargs)
