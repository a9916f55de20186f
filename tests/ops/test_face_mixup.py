"""face_mixup (and face_mixup_out via ``out=``): ``lam * x + (1 - lam) * x[perm]``, its gradient in x, timm's mix."""

import numpy as np
import pytest
import timm.data.mixup
import torch

import ferfast
from ferfast.reference import face_mixup_ref, flip_perm
from tests.utils import (
    BACKENDS,
    DTYPES,
    LOW_PRECISION,
    assert_close_to_ref,
    assert_identical,
    backend_cases,
    backend_device,
    device_with_ops,
    direct_call_error,
    leaf,
    non_contiguous,
    op_namespace,
)

OPS = ("face_mixup", "face_mixup_out")


@pytest.fixture
def device(backend):
    """The backend's device (conftest's fixture), failing if the backend runs here but lacks these ops."""
    return device_with_ops(backend, OPS)


# ---- data --------------------------------------------------------------------------------------


def make_perm(kind: str, b: int) -> torch.Tensor | None:
    if kind == "none":  # the default: SSFER's flip pairing
        return None
    if kind == "flip":
        return flip_perm(b)
    if kind == "random":
        return torch.randperm(b)
    if kind == "repeated":  # not a permutation: some images are the partner of several (or of none)
        perm = torch.randint(0, b, (b,))
        perm[: min(b, 3)] = 0
        return perm
    raise ValueError(kind)


def make_lam(kind: str, b: int):
    """Scalar lam (a number or a 0-d tensor: one per batch) or per-sample lam [B] (with exact 0s and 1s)."""
    if kind == "0":
        return 0.0
    if kind == "1":
        return 1.0
    if kind == "0.3":
        return 0.3
    if kind == "tensor0d":
        return torch.tensor(0.71)
    if kind == "per_sample":
        lam = torch.rand(b)
        lam[0::4] = 1.0
        lam[1::4] = 0.0
        return lam
    raise ValueError(kind)


def lam_as(lam, x_dtype: torch.dtype) -> torch.Tensor:
    """The lam the op computes with for images of ``x_dtype``: float32 (float64 for float64 images)."""
    acc = torch.float64 if x_dtype == torch.float64 else torch.float32
    return torch.as_tensor(lam, dtype=torch.float64).to(acc)


def lam_on(lam, device):
    return lam.to(device) if isinstance(lam, torch.Tensor) else lam


def reference(x, lam, perm, with_originals, grad_out, dtype=None):
    """Output and grad x of the reference, run in ``dtype`` (default: x's own) on the same values."""
    dtype = dtype or x.dtype
    xr = leaf(x, "cpu", dtype)
    out = face_mixup_ref(xr, lam_as(lam, x.dtype), perm, with_originals)  # lam stays float32 for low precision
    out.backward(grad_out.to(dtype))
    return out.detach(), xr.grad


def check_against_reference(out, grad, x, lam, perm, with_originals, grad_out):
    """Values and gradient: exact reference for fp32/fp64, the low-precision rule for bf16/fp16."""
    b = x.shape[0]
    mixed = out[b:] if with_originals else out
    exact, exact_grad = reference(x, lam, perm, with_originals, grad_out, torch.float64)
    exact = exact[b:] if with_originals else exact
    if x.dtype in LOW_PRECISION:
        ref32, ref32_grad = reference(x, lam, perm, with_originals, grad_out, torch.float32)
        ref_lowp, ref_lowp_grad = reference(x, lam, perm, with_originals, grad_out)
        if with_originals:
            ref32, ref_lowp = ref32[b:], ref_lowp[b:]
        assert_close_to_ref(mixed, ref32, ref_lowp, name="mixed images")
        if grad is not None:
            assert_close_to_ref(grad, ref32_grad, ref_lowp_grad, name="grad x")
    else:
        assert_close_to_ref(mixed, exact, name="mixed images")
        if grad is not None:
            assert_close_to_ref(grad, exact_grad, name="grad x")


def check_exact_rows(mixed, x, lam, perm):
    """lam = 1 leaves an image as it is and lam = 0 copies its partner, bit for bit (``1*a + 0*b == a``)."""
    lam_rows = lam_as(lam, x.dtype).reshape(-1).expand(x.shape[0])
    ones, zeros = lam_rows == 1, lam_rows == 0
    if bool(ones.any()):
        assert_identical(mixed.cpu()[ones], x[ones], name="rows with lam = 1")
    if bool(zeros.any()):
        assert_identical(mixed.cpu()[zeros], x[perm][zeros], name="rows with lam = 0")


# (B, per-sample shape, lam kind, perm kind)
CASES = [
    pytest.param((1, (3, 8, 8), "0.3", "flip"), id="B1-0.3-flip"),
    pytest.param((2, (3, 8, 8), "0", "none"), id="B2-lam0-default"),
    pytest.param((2, (3, 8, 8), "1", "flip"), id="B2-lam1-flip"),
    pytest.param((3, (3, 5, 7), "tensor0d", "flip"), id="B3-5x7-tensor0d-flip"),
    pytest.param((5, (1, 4, 4), "per_sample", "random"), id="B5-C1-per_sample-random"),
    pytest.param((8, (3, 4, 4), "per_sample", "repeated"), id="B8-per_sample-repeated"),
    pytest.param((7, (3, 4, 4), "0.3", "repeated"), id="B7-0.3-repeated"),
    pytest.param((33, (3, 8, 8), "per_sample", "flip"), id="B33-per_sample-flip"),
    pytest.param((64, (3, 8, 8), "0.3", "random"), id="B64-0.3-random"),
    pytest.param((2, (3, 32, 48), "per_sample", "flip"), id="B2-32x48-per_sample"),  # rows over 4096 elements
    pytest.param((4, (10,), "tensor0d", "random"), id="B4-features10"),
    pytest.param((6, (), "per_sample", "repeated"), id="B6-scalars"),
]
CASES_INTERPRETED = [
    pytest.param((1, (3, 4, 4), "0.3", "flip"), id="B1-0.3-flip"),
    pytest.param((2, (3, 4, 4), "0", "none"), id="B2-lam0-default"),
    pytest.param((2, (3, 4, 4), "1", "flip"), id="B2-lam1-flip"),
    pytest.param((3, (3, 5, 7), "tensor0d", "flip"), id="B3-5x7-tensor0d-flip"),
    pytest.param((5, (1, 4, 4), "per_sample", "random"), id="B5-C1-per_sample-random"),
    pytest.param((8, (2, 2), "per_sample", "repeated"), id="B8-per_sample-repeated"),
    pytest.param((2, (3, 32, 48), "0.3", "flip"), id="B2-32x48"),
    pytest.param((6, (), "per_sample", "repeated"), id="B6-scalars"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_originals", [False, True], ids=["mixed", "with_originals"])
@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED))
def test_face_mixup_matches_reference(backend, case, with_originals, dtype, device):
    b, shape, lam_kind, perm_kind = case
    x = torch.randn(b, *shape).to(dtype)
    lam, perm = make_lam(lam_kind, b), make_perm(perm_kind, b)
    xd = leaf(x, device)
    out = ferfast.face_mixup(
        xd,
        lam_on(lam, device),
        None if perm is None else perm.to(device),
        with_originals=with_originals,
        backend=backend,
    )
    assert out.shape == ((2 * b if with_originals else b), *shape)
    assert out.dtype == dtype and out.device.type == device.type and out.is_contiguous()
    perm = flip_perm(b) if perm is None else perm
    if with_originals:
        assert_identical(out[:b], x, name="originals")  # [x; mixed]: the first half is a copy of x
    check_exact_rows(out[b:] if with_originals else out, x, lam, perm)

    grad_out = torch.randn(out.shape).to(dtype)
    out.backward(grad_out.to(device))
    assert xd.grad.dtype == dtype and xd.grad.shape == x.shape
    check_against_reference(out.detach(), xd.grad, x, lam, perm, with_originals, grad_out)


@pytest.mark.parametrize("perm_kind", ["flip", "random", "repeated"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_face_mixup_gradient_with_repeated_partners(backend, perm_kind, device):
    """An image that is the partner of several images gets all their (1 - lam) shares of the gradient,
    and one that is nobody's partner only its own lam share."""
    b = 6
    x = torch.randn(b, 3, 4, 4)
    perm = {"flip": flip_perm(b), "random": torch.randperm(b), "repeated": torch.tensor([0, 0, 0, 5, 5, 2])}[perm_kind]
    lam = torch.tensor([0.1, 0.5, 0.9, 0.3, 1.0, 0.0])
    xd = leaf(x, device)
    out = ferfast.face_mixup(xd, lam.to(device), perm.to(device), backend=backend)
    out.sum().backward()  # an expanded (stride 0) incoming gradient
    expected = lam.clone().double()
    expected.index_add_(0, perm, 1 - lam.double())
    assert_close_to_ref(xd.grad, expected.reshape(b, 1, 1, 1).expand(b, 3, 4, 4), name="grad x")
    check_against_reference(out.detach(), xd.grad, x, lam, perm, False, torch.ones(b, 3, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_face_mixup_non_contiguous_images(backend, dtype, device):
    x = torch.randn(4, 3, 8, 6).to(dtype)
    lam, perm = torch.rand(4), torch.tensor([3, 0, 0, 1])
    views = {
        "channels_last": x.to(device).contiguous(memory_format=torch.channels_last),
        "strided_w": non_contiguous(x).to(device),
        "every_other_image": torch.stack([x, x], dim=1).to(device)[:, 0],
        "transposed_hw": x.transpose(2, 3).contiguous().to(device).transpose(2, 3),
    }
    for name, view in views.items():
        assert not view.is_contiguous(), name
        xd = view.detach().requires_grad_(True)
        out = ferfast.face_mixup(xd, lam.to(device), perm.to(device), with_originals=True, backend=backend)
        assert out.shape == (8, 3, 8, 6) and out.is_contiguous(), name
        assert_identical(out[:4], x, name=f"originals ({name})")
        grad_out = torch.randn(8, 3, 8, 6).to(dtype)
        out.backward(grad_out.to(device))
        check_against_reference(out.detach(), xd.grad, x, lam, perm, True, grad_out)
        with torch.no_grad():
            buf = torch.empty(8, 3, 8, 6, dtype=dtype, device=device)
            ferfast.face_mixup(view, lam.to(device), perm.to(device), out=buf, backend=backend)
        assert_identical(buf, out.detach(), name=f"out= ({name})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_face_mixup_empty_and_single(backend, device):
    x = torch.randn(0, 3, 4, 4, device=device)
    assert ferfast.face_mixup(x, 0.5, backend=backend).shape == (0, 3, 4, 4)
    assert ferfast.face_mixup(x, 0.5, with_originals=True, backend=backend).shape == (0, 3, 4, 4)
    one = torch.randn(1, 3, 4, 4)  # B = 1: the image is its own partner, so mixing leaves it as it is
    out = ferfast.face_mixup(one.to(device), 0.37, backend=backend)
    assert_close_to_ref(out, one.double(), name="B=1 self-mix")


# ---- out= (face_mixup_out) ---------------------------------------------------------------------

OUT_CASES = [
    pytest.param((1, (3, 4, 4), "0.3", "flip"), id="B1"),
    pytest.param((2, (3, 8, 8), "per_sample", "none"), id="B2-per_sample"),
    pytest.param((5, (3, 5, 7), "tensor0d", "repeated"), id="B5-repeated"),
    pytest.param((33, (3, 8, 8), "per_sample", "random"), id="B33-random"),
    pytest.param((2, (3, 32, 48), "0.3", "flip"), id="B2-32x48"),
]
OUT_CASES_INTERPRETED = [c for c in OUT_CASES if c.id != "B33-random"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ["B", "2B"])
@pytest.mark.parametrize(("backend", "case"), backend_cases(OUT_CASES, OUT_CASES_INTERPRETED))
def test_face_mixup_out(backend, case, rows, dtype, device):
    """``out=`` writes into a caller's buffer: ``[B, ...]`` the mixed images, ``[2B, ...]`` ``[x; mixed]``."""
    b, shape, lam_kind, perm_kind = case
    x = torch.randn(b, *shape).to(dtype)
    lam, perm = make_lam(lam_kind, b), make_perm(perm_kind, b)
    n = b if rows == "B" else 2 * b
    buf = torch.full((n, *shape), float("nan"), dtype=dtype, device=device)
    perm_d = None if perm is None else perm.to(device)
    ret = ferfast.face_mixup(x.to(device), lam_on(lam, device), perm_d, out=buf, backend=backend)
    assert ret is buf
    perm = flip_perm(b) if perm is None else perm
    with_originals = rows == "2B"
    if with_originals:
        assert_identical(buf[:b], x, name="originals")
    check_against_reference(buf, None, x, lam, perm, with_originals, torch.zeros(n, *shape))
    check_exact_rows(buf[b:] if with_originals else buf, x, lam, perm)
    functional = ferfast.face_mixup(
        x.to(device), lam_on(lam, device), perm_d, with_originals=with_originals, backend=backend
    )
    assert_identical(buf, functional, name="out= vs the functional form")
    # with_originals=True asks for the [2B] layout explicitly
    if with_originals:
        buf2 = torch.empty_like(buf)
        ferfast.face_mixup(x.to(device), lam_on(lam, device), perm_d, out=buf2, with_originals=True, backend=backend)
        assert_identical(buf2, buf, name="out= with_originals=True")


@pytest.mark.parametrize("backend", BACKENDS)
def test_face_mixup_out_without_autograd(backend, device):
    """out= is written without autograd: fine under no_grad even for an x that requires grad."""
    x = torch.randn(4, 3, 4, 4, device=device, requires_grad=True)
    buf = torch.empty(8, 3, 4, 4, device=device)
    with torch.no_grad():
        ferfast.face_mixup(x, 0.4, out=buf, backend=backend)
    assert not buf.requires_grad
    expected = face_mixup_ref(x.detach().cpu().double(), 0.4, flip_perm(4), True)
    assert_close_to_ref(buf, expected, name="out= under no_grad")
    with pytest.raises(RuntimeError, match="autograd"):
        ferfast.face_mixup(x, 0.4, out=buf, backend=backend)


# ---- timm's Mixup --------------------------------------------------------------------------------


def timm_mixup(x: torch.Tensor, y: torch.Tensor, mode: str, lam, smoothing: float = 0.1, num_classes: int = 7):
    """timm's ``Mixup.__call__`` (mixup only, flip pairing) on a copy of ``x``, with the lam we choose."""
    mixup = timm.data.mixup.Mixup(
        mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=smoothing, num_classes=num_classes, mode=mode
    )
    if mode == "batch":
        mixup._params_per_batch = lambda: (float(lam), False)
    else:
        mixup._params_per_elem = lambda n: (np.asarray(lam[:n], dtype=np.float32), np.zeros(n, dtype=bool))
    return mixup(x.clone(), y)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.6180339887, 0.999, 1.0])
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_face_mixup_equals_timm_batch_mode(backend, lam):
    """timm (and SSFER) mix in place: ``x_flipped = x.flip(0).mul_(1 - lam); x.mul_(lam).add_(x_flipped)``."""
    dev = backend_device(backend)
    x = torch.randn(8, 3, 8, 8)
    expected = x.clone()
    x_flipped = expected.flip(0).mul_(1.0 - lam)
    expected.mul_(lam).add_(x_flipped)
    timm_x, _ = timm_mixup(x, torch.randint(0, 7, (8,)), "batch", lam)
    assert torch.equal(timm_x, expected)  # the transcription above is timm's
    out = ferfast.face_mixup(x.to(dev), lam, backend=backend)
    assert_close_to_ref(out, timm_x.double(), name="face_mixup vs timm")


@pytest.mark.parametrize("mode", ["elem", "pair"])
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_face_mixup_equals_timm_elem_and_pair_modes(backend, mode):
    """timm's per-sample modes: ``elem`` draws one lam per image, ``pair`` one per flip pair."""
    dev = backend_device(backend)
    b = 8
    x = torch.randn(b, 3, 8, 8)
    lam_draw = np.array([0.2, 0.9, 1.0, 0.0, 0.45, 0.7, 0.33, 0.81], dtype=np.float32)
    timm_x, _ = timm_mixup(x, torch.randint(0, 7, (b,)), mode, lam_draw)
    lam = lam_draw if mode == "elem" else np.concatenate([lam_draw[: b // 2], lam_draw[: b // 2][::-1]])
    lam = torch.from_numpy(lam.copy())
    if mode == "pair":
        assert torch.equal(lam, lam[flip_perm(b)])
    out = ferfast.face_mixup(x.to(dev), lam.to(dev), backend=backend)
    assert_close_to_ref(out, timm_x.double(), name=f"face_mixup vs timm ({mode})")


# ---- gradcheck, opcheck, argument checks --------------------------------------------------------


@pytest.mark.ext
@pytest.mark.parametrize(
    ("lam", "perm", "with_originals"),
    [
        (0.3, flip_perm(4), False),
        (torch.tensor([0.2, 0.0, 1.0, 0.6], dtype=torch.float64), torch.tensor([1, 1, 1, 3]), True),
        (torch.tensor(0.8, dtype=torch.float64), torch.tensor([2, 0, 3, 1]), True),
    ],
    ids=["scalar-flip", "per_sample-repeated-with_originals", "tensor0d-random-with_originals"],
)
def test_gradcheck_native(lam, perm, with_originals):
    backend_device("cpu")
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: ferfast.face_mixup(a, lam, perm, with_originals=with_originals, backend="cpu"), (x,)
    )


def _opcheck_samples(device, dtype=torch.float32):
    x = torch.randn(5, 3, 4, 4).to(device, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lam0 = torch.tensor(0.3, dtype=acc, device=device)
    lam = torch.rand(5, dtype=acc, device=device)
    flip, repeated = flip_perm(5, device), torch.tensor([0, 0, 4, 2, 2], device=device)
    return [
        ("face_mixup", (x.clone().requires_grad_(True), lam0, flip, False)),
        ("face_mixup", (x.clone().requires_grad_(True), lam, repeated, True)),
        ("face_mixup", (x, lam0, repeated, True)),
        ("face_mixup_out", (x, lam, repeated, torch.empty(5, 3, 4, 4, dtype=dtype, device=device))),
        ("face_mixup_out", (x, lam0, flip, torch.empty(10, 3, 4, 4, dtype=dtype, device=device))),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, dtype, device):
    ns = getattr(torch.ops, op_namespace(backend))
    for name, args in _opcheck_samples(device, dtype):
        torch.library.opcheck(getattr(ns, name).default, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_calls_reject_bad_input(backend, device):
    ns = getattr(torch.ops, op_namespace(backend))
    x, lam, perm = torch.randn(4, 3, 2, device=device), torch.rand(4, device=device), flip_perm(4, device)
    bad_calls = [
        (ns.face_mixup.default, (x, lam, perm[:3], False)),
        (ns.face_mixup.default, (x, lam, perm.int(), False)),
        (ns.face_mixup.default, (x, lam[:3], perm, False)),
        (ns.face_mixup.default, (x, lam[None], perm, True)),
        (ns.face_mixup.default, (x.long(), lam, perm, False)),
        (ns.face_mixup_out.default, (x, lam, perm, torch.empty(3, 3, 2, device=device))),
        (ns.face_mixup_out.default, (x, lam, perm, torch.empty(8, 3, 3, device=device))),
        (ns.face_mixup_out.default, (x, lam, perm, torch.empty(4, 3, 2, device=device, dtype=torch.float64))),
        (ns.face_mixup_out.default, (x, lam, perm, torch.empty(4, 2, 3, device=device).transpose(1, 2))),
        (ns.face_mixup_out.default, (x, lam, perm, x)),  # overlap
    ]
    for op, args in bad_calls:
        with pytest.raises(direct_call_error(backend)):
            op(*args)


X = torch.randn(4, 3, 2, 2)
PERM = torch.tensor([3, 2, 1, 0])


@pytest.mark.parametrize(
    ("x", "lam", "perm", "error", "match"),
    [
        pytest.param(X.tolist(), 0.5, PERM, TypeError, "x", id="list-x"),
        pytest.param(X.long(), 0.5, PERM, TypeError, "x", id="int-x"),
        pytest.param(X[0, 0, 0, 0], 0.5, PERM, ValueError, "x", id="0d-x"),
        pytest.param(X, 1.5, PERM, ValueError, "lam", id="lam>1"),
        pytest.param(X, -0.1, PERM, ValueError, "lam", id="lam<0"),
        pytest.param(X, float("nan"), PERM, ValueError, "lam", id="lam-nan"),
        pytest.param(X, True, PERM, TypeError, "lam", id="lam-bool"),
        pytest.param(X, "0.5", PERM, TypeError, "lam", id="lam-str"),
        pytest.param(X, torch.tensor([0.5, 0.5, 2.0, 0.5]), PERM, ValueError, "lam", id="lam-tensor>1"),
        pytest.param(X, torch.tensor(-1.0), PERM, ValueError, "lam", id="lam-0d<0"),
        pytest.param(X, torch.rand(5), PERM, ValueError, "lam", id="lam-wrong-length"),
        pytest.param(X, torch.rand(4, 1), PERM, ValueError, "lam", id="lam-rank2"),
        pytest.param(X, torch.tensor([1, 0, 1, 0]), PERM, TypeError, "lam", id="lam-int-tensor"),
        pytest.param(X, torch.rand(4).to("meta"), PERM, ValueError, "lam", id="lam-meta"),
        pytest.param(X, 0.5, PERM.int(), TypeError, "perm", id="int32-perm"),
        pytest.param(X, 0.5, PERM.float(), TypeError, "perm", id="float-perm"),
        pytest.param(X, 0.5, PERM[:3], ValueError, "perm", id="perm-short"),
        pytest.param(X, 0.5, PERM[None], ValueError, "perm", id="perm-rank2"),
        pytest.param(X, 0.5, torch.tensor([0, 1, 2, 4]), ValueError, "perm", id="perm-out-of-range"),
        pytest.param(X, 0.5, torch.tensor([0, 1, -1, 3]), ValueError, "perm", id="perm-negative"),
        pytest.param(X, 0.5, PERM.to("meta"), ValueError, "perm", id="perm-meta"),
    ],
)
def test_face_mixup_rejects_bad_input(x, lam, perm, error, match):
    with pytest.raises(error, match=match):
        ferfast.face_mixup(x, lam, perm)


def _overlapping_buffer():
    buf = torch.empty(8, 3, 2, 2)
    buf[:4] = X
    return buf[:4], buf  # x lives in the first half of out: a natural attempt that must be refused


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("list", TypeError, "out"),
        ("dtype", TypeError, "out"),
        ("rows", ValueError, "out"),
        ("trailing", ValueError, "out"),
        ("rank", ValueError, "out"),
        ("with_originals", ValueError, "with_originals"),
        ("non_contiguous", ValueError, "out must be contiguous"),
        ("is_x", ValueError, "overlap"),
        ("x_inside", ValueError, "overlap"),
        ("meta", ValueError, "out"),
        ("autograd", RuntimeError, "autograd"),
    ],
)
def test_face_mixup_rejects_bad_out(kind, error, match):
    x, kwargs = X.clone(), {}
    out = {
        "list": [[0.0]],
        "dtype": torch.empty(4, 3, 2, 2, dtype=torch.float64),
        "rows": torch.empty(6, 3, 2, 2),
        "trailing": torch.empty(4, 3, 2, 3),
        "rank": torch.empty(4, 12),
        "with_originals": torch.empty(4, 3, 2, 2),
        "non_contiguous": torch.empty(4, 3, 2, 4)[..., ::2],
        "meta": torch.empty(4, 3, 2, 2, device="meta"),
        "autograd": torch.empty(4, 3, 2, 2),
    }.get(kind)
    if kind == "with_originals":
        kwargs["with_originals"] = True
    if kind == "is_x":
        out = x
    if kind == "x_inside":
        x, out = _overlapping_buffer()
    if kind == "autograd":
        x.requires_grad_(True)
    with pytest.raises(error, match=match):
        ferfast.face_mixup(x, 0.5, PERM, out=out, **kwargs)
