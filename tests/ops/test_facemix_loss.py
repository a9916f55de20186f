"""facemix_loss: SSFER's face-IoU Mixup loss and its gradients in both logits (computed in forward)."""

import math

import pytest
import torch

import ferfast
from ferfast.reference import (
    SSFER_FALLBACK_BOX,
    facemix_loss_ref,
    flip_perm,
    mixup_soft_targets_ref,
    ssfer_mix_batch_,
    ssfer_paired_iou_loop_ref,
    ssfer_stage1_loss_ref,
)
from tests.utils import (
    BACKENDS,
    DTYPES,
    LOW_PRECISION,
    assert_close_to_ref,
    backend_cases,
    backend_device,
    device_with_ops,
    direct_call_error,
    leaf,
    non_contiguous,
    op_namespace,
    ops_missing,
)

OPS = ("facemix_loss",)


@pytest.fixture
def device(backend):
    """The backend's device (conftest's fixture), failing if the backend runs here but lacks these ops."""
    return device_with_ops(backend, OPS)


# ---- data --------------------------------------------------------------------------------------


def make_perm(kind: str, b: int) -> torch.Tensor:
    if kind == "flip":
        return flip_perm(b)
    if kind == "random":
        return torch.randperm(b)
    if kind == "repeated":  # not a permutation: real image j weighs in once per i with perm[i] == j
        perm = torch.randint(0, b, (b,))
        perm[: min(b, 3)] = b - 1
        return perm
    raise ValueError(kind)


def make_inputs(b, k, dtype, perm_kind="flip", iou_kind="random", scale=3.0, lam=None, smoothing=0.1):
    """Logits of the real and the mixed images, labels, Mixup targets, partner IoU and partners (CPU)."""
    real = (torch.randn(b, k) * scale).to(dtype)
    mixed = (torch.randn(b, k) * scale).to(dtype)
    y = torch.randint(0, k, (b,))
    y[0] = k - 1
    perm = make_perm(perm_kind, b)
    lam = torch.rand(b) if lam is None else lam
    wide = dtype == torch.float64
    y_soft = mixup_soft_targets_ref(y, k, lam.double() if wide else lam, perm, smoothing)
    iou = {"random": torch.rand(b), "zeros": torch.zeros(b), "ones": torch.ones(b)}[iou_kind]
    if iou_kind == "random":
        iou[0::4] = 0.0
        iou[1::4] = 1.0
    return real, mixed, y, y_soft, iou.to(y_soft.dtype), perm


def reference(real, mixed, y, y_soft, iou, perm, dtype=None):
    """Loss and the two gradients of the reference, run in ``dtype`` (default: the logits' own)."""
    r, m = leaf(real, "cpu", dtype), leaf(mixed, "cpu", dtype)
    wide = dtype == torch.float64
    loss = facemix_loss_ref(r, m, y, y_soft.double() if wide else y_soft, iou.double() if wide else iou, perm)
    loss.backward()
    return loss.detach(), r.grad, m.grad


def check_against_reference(loss, grad_real, grad_mixed, real, mixed, y, y_soft, iou, perm):
    """The loss is float32 (float64) math on the logits' values: the exact reference at fp32 tolerance
    for every dtype. Gradients are stored in the logits' dtype: the low-precision rule for bf16/fp16."""
    exact = reference(real, mixed, y, y_soft, iou, perm, torch.float64)
    assert_close_to_ref(loss, exact[0], name="loss")
    if real.dtype in LOW_PRECISION:
        ref32 = reference(real, mixed, y, y_soft, iou, perm, torch.float32)
        ref_lowp = reference(real, mixed, y, y_soft, iou, perm)
        assert_close_to_ref(loss, ref32[0], ref_lowp[0], name="loss (low-precision rule)")
        if grad_real is not None:
            assert_close_to_ref(grad_real, ref32[1], ref_lowp[1], name="grad logits_real")
            assert_close_to_ref(grad_mixed, ref32[2], ref_lowp[2], name="grad logits_mixed")
    elif grad_real is not None:
        assert_close_to_ref(grad_real, exact[1], name="grad logits_real")
        assert_close_to_ref(grad_mixed, exact[2], name="grad logits_mixed")


# (B, K, perm kind, iou kind, logit scale)
CASES = [
    pytest.param((1, 7, "flip", "random", 3.0), id="B1-K7"),
    pytest.param((2, 7, "flip", "random", 3.0), id="B2-K7"),
    pytest.param((3, 8, "flip", "random", 3.0), id="B3-K8"),
    pytest.param((5, 7, "random", "random", 3.0), id="B5-K7-random"),
    pytest.param((6, 7, "repeated", "random", 3.0), id="B6-K7-repeated"),
    pytest.param((33, 8, "random", "zeros", 3.0), id="B33-K8-iou0"),
    pytest.param((64, 7, "flip", "random", 3.0), id="B64-K7"),
    pytest.param((64, 1000, "flip", "random", 3.0), id="B64-K1000"),
    pytest.param((8, 1000, "repeated", "ones", 3.0), id="B8-K1000-repeated-iou1"),
    pytest.param((4, 7, "flip", "random", 40.0), id="B4-K7-large-logits"),
    pytest.param((3, 1, "flip", "random", 3.0), id="B3-K1"),
]
CASES_INTERPRETED = [
    pytest.param((1, 7, "flip", "random", 3.0), id="B1-K7"),
    pytest.param((2, 7, "flip", "random", 3.0), id="B2-K7"),
    pytest.param((3, 8, "flip", "random", 3.0), id="B3-K8"),
    pytest.param((6, 7, "repeated", "random", 3.0), id="B6-K7-repeated"),
    pytest.param((5, 8, "random", "zeros", 3.0), id="B5-K8-iou0"),
    pytest.param((4, 1000, "repeated", "ones", 3.0), id="B4-K1000-repeated-iou1"),
    pytest.param((4, 7, "flip", "random", 40.0), id="B4-K7-large-logits"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED))
def test_facemix_loss_matches_reference(backend, case, dtype, device):
    b, k, perm_kind, iou_kind, scale = case
    real, mixed, y, y_soft, iou, perm = make_inputs(b, k, dtype, perm_kind, iou_kind, scale)
    rd, md = leaf(real, device), leaf(mixed, device)
    loss = ferfast.facemix_loss(
        rd, md, y.to(device), y_soft.to(device), iou.to(device), perm.to(device), backend=backend
    )
    assert loss.shape == () and loss.device.type == device.type
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    loss.backward()
    assert rd.grad.dtype == dtype and md.grad.dtype == dtype
    check_against_reference(loss, rd.grad, md.grad, real, mixed, y, y_soft, iou, perm)
    if iou_kind == "ones":  # faces that overlap perfectly: the real images do not count
        assert bool((rd.grad == 0).all())


@pytest.mark.parametrize(
    ("y_soft_dtype", "iou_dtype"),
    [(torch.float64, torch.float32), (torch.bfloat16, torch.float16), (torch.float16, torch.float64)],
    ids=["ysoft64-iou32", "ysoft16b-iou16", "ysoft16-iou64"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_facemix_loss_target_dtypes(backend, y_soft_dtype, iou_dtype, device):
    """Targets and IoU are constants in any float dtype; the math stays float32 on their values."""
    real, mixed, y, y_soft, iou, perm = make_inputs(6, 7, torch.float32, "random")
    y_soft, iou = y_soft.to(y_soft_dtype), iou.to(iou_dtype)
    rd, md = leaf(real, device), leaf(mixed, device)
    loss = ferfast.facemix_loss(
        rd, md, y.to(device), y_soft.to(device), iou.to(device), perm.to(device), backend=backend
    )
    loss.backward()
    assert loss.dtype == torch.float32
    check_against_reference(loss, rd.grad, md.grad, real, mixed, y, y_soft.float(), iou.float(), perm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_facemix_loss_backward_scales_the_stored_gradients(backend, device):
    real, mixed, y, y_soft, iou, perm = make_inputs(5, 7, torch.float32, "repeated")
    _, exact_gr, exact_gm = reference(real, mixed, y, y_soft, iou, perm, torch.float64)
    args = [t.to(device) for t in (y, y_soft, iou, perm)]

    rd, md = leaf(real, device), leaf(mixed, device)
    (3.0 * ferfast.facemix_loss(rd, md, *args, backend=backend)).backward()
    assert_close_to_ref(rd.grad, 3.0 * exact_gr, name="grad real of 3*loss")
    assert_close_to_ref(md.grad, 3.0 * exact_gm, name="grad mixed of 3*loss")

    rd, md = leaf(real, device), leaf(mixed, device)
    loss = ferfast.facemix_loss(rd, md, *args, backend=backend)
    gr, gm = torch.autograd.grad(loss, (rd, md), grad_outputs=torch.tensor(-0.5, device=device))
    assert_close_to_ref(gr, -0.5 * exact_gr, name="grad real with grad_output -0.5")
    assert_close_to_ref(gm, -0.5 * exact_gm, name="grad mixed with grad_output -0.5")

    rd, md = leaf(real, device), leaf(mixed, device)
    loss = ferfast.facemix_loss(rd, md, *args, backend=backend)
    (loss + loss).backward()
    assert_close_to_ref(rd.grad, 2.0 * exact_gr, name="grad real of loss + loss")

    md = leaf(mixed, device)  # only one of the logits requires grad
    ferfast.facemix_loss(real.to(device), md, *args, backend=backend).backward()
    assert_close_to_ref(md.grad, exact_gm, name="grad mixed alone")


@pytest.mark.parametrize("backend", BACKENDS)
def test_facemix_loss_without_grad(backend, device):
    real, mixed, y, y_soft, iou, perm = make_inputs(5, 8, torch.float32, "random")
    exact = reference(real, mixed, y, y_soft, iou, perm, torch.float64)[0]
    args = [t.to(device) for t in (real, mixed, y, y_soft, iou, perm)]
    loss = ferfast.facemix_loss(*args, backend=backend)
    assert not loss.requires_grad
    assert_close_to_ref(loss, exact, name="loss (logits without grad)")
    with torch.no_grad():
        loss = ferfast.facemix_loss(args[0].requires_grad_(True), *args[1:], backend=backend)
    assert not loss.requires_grad
    assert_close_to_ref(loss, exact, name="loss (no_grad)")


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_facemix_loss_constants_get_no_gradient(backend, device):
    """y_soft and iou are constants (they come from labels and boxes)."""
    real, mixed, y, y_soft, iou, perm = make_inputs(4, 7, torch.float32)
    ys, io = leaf(y_soft, device), leaf(iou, device)
    rd = leaf(real, device)
    ferfast.facemix_loss(rd, mixed.to(device), y.to(device), ys, io, perm.to(device), backend=backend).backward()
    assert ys.grad is None and io.grad is None and rd.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_facemix_loss_non_contiguous_inputs(backend, device):
    real, mixed, y, y_soft, iou, perm = make_inputs(6, 7, torch.float32, "repeated")
    exact = reference(real, mixed, y, y_soft, iou, perm, torch.float64)
    r_base = leaf(torch.stack([real, real], dim=-1), device)
    m_t = leaf(mixed.t().contiguous(), device)
    r_view, m_view = r_base[..., 0], m_t.t()
    views = [non_contiguous(t).to(device) for t in (y, y_soft, iou, perm)]
    assert not any(t.is_contiguous() for t in (r_view, m_view, *views))
    loss = ferfast.facemix_loss(r_view, m_view, *views, backend=backend)
    loss.backward()
    assert_close_to_ref(loss, exact[0], name="loss")
    assert_close_to_ref(r_base.grad[..., 0], exact[1], name="grad real")
    assert bool((r_base.grad[..., 1] == 0).all())
    assert_close_to_ref(m_t.grad.t(), exact[2], name="grad mixed")


# ---- SSFER's formula, by hand --------------------------------------------------------------------


def _log_sum_exp(row):
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_facemix_loss_by_hand(backend, device):
    """B = 4, K = 3, flip pairing, every number on Python floats:
    loss = [sum_i CE_soft(mixed_i, y_soft_i) + sum_i (1 - iou_i)(CE(real_i, y_i) + CE(real_{3-i}, y_{3-i}))] / 4.
    """
    real = [[2.0, -1.0, 0.5], [0.0, 0.3, -2.0], [1.5, 1.5, 0.0], [-0.7, 2.2, 0.1]]
    mixed = [[0.2, 0.1, -0.3], [3.0, -1.0, 0.0], [-1.0, 0.5, 2.0], [0.0, 0.0, 0.0]]
    y = [0, 2, 1, 1]
    iou = [0.25, 0.6, 0.6, 0.25]  # SSFER's loop mirrors the IoU of each flip pair
    lam, s, b, k = 0.7, 0.1, 4, 3
    off, on = s / k, 1 - s + s / k

    def one_hot(label):
        return [on if c == label else off for c in range(k)]

    y_soft = [[lam * p + (1 - lam) * q for p, q in zip(one_hot(y[i]), one_hot(y[b - 1 - i]))] for i in range(b)]
    ce_real = [_log_sum_exp(real[i]) - real[i][y[i]] for i in range(b)]
    ce_mixed = [-sum(t * (z - _log_sum_exp(mixed[i])) for t, z in zip(y_soft[i], mixed[i])) for i in range(b)]
    expected = (sum(ce_mixed) + sum((1 - iou[i]) * (ce_real[i] + ce_real[b - 1 - i]) for i in range(b))) / b
    # d/d real_j: every real image appears in two pairs' terms (its own and its partner's)
    weight = [(1 - iou[j]) + (1 - iou[b - 1 - j]) for j in range(b)]

    def softmax(row):
        lse = _log_sum_exp(row)
        return [math.exp(v - lse) for v in row]

    grad_real = [[weight[j] * (p - (c == y[j])) / b for c, p in enumerate(softmax(real[j]))] for j in range(b)]
    grad_mixed = [[(p - t) / b for p, t in zip(softmax(mixed[j]), y_soft[j])] for j in range(b)]

    f64 = torch.float64
    y_t = torch.tensor(y, device=device)
    soft = ferfast.mixup_soft_targets(y_t, k, lam, label_smoothing=s, backend=backend)
    assert_close_to_ref(soft, torch.tensor(y_soft, dtype=f64), name="mixup targets")
    rd, md = leaf(torch.tensor(real), device), leaf(torch.tensor(mixed), device)
    loss = ferfast.facemix_loss(rd, md, y_t, soft, torch.tensor(iou, device=device), backend=backend)
    loss.backward()
    assert_close_to_ref(loss, torch.tensor(expected, dtype=f64), name="loss by hand")
    assert_close_to_ref(rd.grad, torch.tensor(grad_real, dtype=f64), name="grad real by hand")
    assert_close_to_ref(md.grad, torch.tensor(grad_mixed, dtype=f64), name="grad mixed by hand")
    # in float64 the ops agree with the hand computation to 1e-10
    rd64, md64 = leaf(torch.tensor(real, dtype=f64), device), leaf(torch.tensor(mixed, dtype=f64), device)
    loss64 = ferfast.facemix_loss(
        rd64,
        md64,
        y_t,
        torch.tensor(y_soft, dtype=f64, device=device),
        torch.tensor(iou, dtype=f64, device=device),
        backend=backend,
    )
    loss64.backward()
    assert_close_to_ref(loss64, torch.tensor(expected, dtype=f64), name="loss by hand (fp64)")
    assert_close_to_ref(rd64.grad, torch.tensor(grad_real, dtype=f64), name="grad real by hand (fp64)")
    assert_close_to_ref(md64.grad, torch.tensor(grad_mixed, dtype=f64), name="grad mixed by hand (fp64)")


# ---- SSFER's released code path ------------------------------------------------------------------


def ssfer_batch(b: int):
    """Images, labels and the detector's boxes of a batch (some images without exactly one face)."""
    x = torch.randn(b, 3, 8, 8)
    y = torch.randint(0, 7, (b,))
    dets = []
    for i in range(b):
        if i % 5 == 2:
            dets.append(torch.zeros(0, 4))  # no face: the fallback box
        elif i % 5 == 4:
            dets.append(torch.tensor([[10.0, 10, 100, 100], [120, 120, 200, 200]]))  # two faces: fallback too
        else:
            xy = torch.rand(2) * 100
            wh = 40 + torch.rand(2) * 80
            box = torch.cat([xy, xy + wh])
            if i % 3 == 0:
                box = box.floor() + 0.5  # int(x + .5) rounds up
            dets.append(box[None])
    int_boxes = torch.tensor(
        [[int(v) for v in SSFER_FALLBACK_BOX] if len(d) != 1 else [int(float(v) + 0.5) for v in d[0]] for d in dets]
    )
    return x, y, dets, int_boxes


@pytest.mark.parametrize("batch", [2, 4, 10])
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_ssfer_stage1_literal_path(backend, batch):
    """SSFER's step (in-place mix, timm's targets, the IoU loop, two CE calls) equals the ferfast ops:
    face_mixup (out of place), mixup_soft_targets, paired_box_iou on the rounded boxes, facemix_loss."""
    dev = backend_device(backend)
    if backend != "reference" and (
        reason := ops_missing(backend, ("facemix_loss", "face_mixup", "mixup_soft_targets", "paired_box_iou"))
    ):
        pytest.fail(reason)
    k, lam = 7, 0.62
    x, y, dets, int_boxes = ssfer_batch(batch)
    w = torch.randn(3 * 8 * 8, k) * 0.1
    drop = (torch.rand(3 * 8 * 8) > 0.1).float() / 0.9  # the second forward pass differs by dropout

    x_mixed = ssfer_mix_batch_(x.clone(), lam)  # what the network sees in the released code
    lo, lm = leaf(x_mixed.flatten(1) @ w, "cpu"), leaf((x_mixed.flatten(1) * drop) @ w, "cpu")
    ssfer_loss, ssfer_inputs = ssfer_stage1_loss_ref(lo, lm, x.clone(), y, dets, lam, k, 0.1)
    ssfer_loss.backward()

    iou = ferfast.paired_box_iou(int_boxes.to(dev), backend=backend)
    assert_close_to_ref(iou, ssfer_paired_iou_loop_ref(dets).double(), name="paired_box_iou vs SSFER's loop")
    mixed = ferfast.face_mixup(x.to(dev), lam, backend=backend)
    assert_close_to_ref(mixed, ssfer_inputs.double(), name="face_mixup vs SSFER's in-place mix")
    y_soft = ferfast.mixup_soft_targets(y.to(dev), k, lam, label_smoothing=0.1, backend=backend)
    rd, md = leaf(lo, dev), leaf(lm, dev)
    loss = ferfast.facemix_loss(rd, md, y.to(dev), y_soft, iou, backend=backend)
    loss.backward()
    assert_close_to_ref(loss, ssfer_loss.double(), name="loss vs SSFER")
    assert_close_to_ref(rd.grad, lo.grad.double(), name="grad logits_origin vs SSFER")
    assert_close_to_ref(md.grad, lm.grad.double(), name="grad logits_mixed vs SSFER")


# ---- the module, gradcheck, opcheck, argument checks -------------------------------------------


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_facemix_loss_module(backend):
    dev = backend_device(backend) if backend is not None else torch.device("cpu")  # skips where it cannot run
    if backend is not None and (reason := ops_missing(backend, OPS)):
        pytest.fail(reason)
    criterion = ferfast.FaceMixLoss(backend=backend)
    assert isinstance(criterion, torch.nn.Module) and list(criterion.parameters()) == []
    real, mixed, y, y_soft, iou, perm = make_inputs(6, 7, torch.float32, "random")
    rd, md = leaf(real, dev), leaf(mixed, dev)
    loss = criterion(rd, md, y.to(dev), y_soft.to(dev), iou.to(dev), perm.to(dev))
    loss.backward()
    check_against_reference(loss, rd.grad, md.grad, real, mixed, y, y_soft, iou, perm)
    flip_loss = criterion(real.to(dev), mixed.to(dev), y.to(dev), y_soft.to(dev), iou.to(dev))  # default pairing
    assert_close_to_ref(
        flip_loss, reference(real, mixed, y, y_soft, iou, flip_perm(6), torch.float64)[0], name="default flip pairing"
    )


@pytest.mark.ext
@pytest.mark.parametrize("perm_kind", ["flip", "repeated"])
def test_gradcheck_native(perm_kind):
    backend_device("cpu")
    real, mixed, y, y_soft, iou, perm = make_inputs(4, 5, torch.float64, perm_kind)
    real.requires_grad_(True)
    mixed.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, m: ferfast.facemix_loss(a, m, y, y_soft, iou, perm, backend="cpu"), (real, mixed)
    )


def _opcheck_samples(device, dtype=torch.float32):
    real, mixed, y, y_soft, iou, perm = make_inputs(5, 7, dtype, "repeated")
    args = [t.to(device) for t in (y, y_soft, iou, perm)]
    r, m = real.to(device), mixed.to(device)
    return [
        (r.clone().requires_grad_(True), m.clone().requires_grad_(True), *args, True),
        (r.clone().requires_grad_(True), m, *args, True),
        (r, m, *args, True),
        (r, m, *args, False),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, dtype, device):
    op = getattr(torch.ops, op_namespace(backend)).facemix_loss.default
    for args in _opcheck_samples(device, dtype):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compute_grad_false_refuses_logits_that_require_grad(backend, device):
    op = getattr(torch.ops, op_namespace(backend)).facemix_loss.default
    real, mixed, y, y_soft, iou, perm = make_inputs(3, 7, torch.float32)
    args = [t.to(device) for t in (y, y_soft, iou, perm)]
    loss, gr, gm = op(real.to(device), mixed.to(device), *args, False)
    assert gr.numel() == 0 and gm.numel() == 0
    assert_close_to_ref(loss, reference(real, mixed, y, y_soft, iou, perm, torch.float64)[0], name="loss")
    with pytest.raises(RuntimeError, match="compute_grad"):
        op(leaf(real, device), mixed.to(device), *args, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_calls_reject_bad_shapes(backend, device):
    op = getattr(torch.ops, op_namespace(backend)).facemix_loss.default
    real, mixed, y, y_soft, iou, perm = (t.to(device) for t in make_inputs(4, 7, torch.float32))
    bad_args = [
        (real[0], mixed, y, y_soft, iou, perm),
        (real, mixed[:3], y, y_soft, iou, perm),
        (real, mixed[:, :6], y, y_soft, iou, perm),
        (real, mixed, y[:3], y_soft, iou, perm),
        (real, mixed, y.int(), y_soft, iou, perm),
        (real, mixed, y, y_soft[:, :6], iou, perm),
        (real, mixed, y, y_soft, iou[:3], perm),
        (real, mixed, y, y_soft, iou, perm[:3]),
        (real, mixed, y, y_soft, iou, perm.int()),
        (real[:0], mixed[:0], y[:0], y_soft[:0], iou[:0], perm[:0]),
        (real.long(), mixed, y, y_soft, iou, perm),
    ]
    for args in bad_args:
        with pytest.raises(direct_call_error(backend)):
            op(*args, False)


REAL, MIXED = torch.randn(4, 7), torch.randn(4, 7)
Y = torch.tensor([0, 6, 2, 3])
Y_SOFT = torch.softmax(torch.randn(4, 7), dim=1)
IOU = torch.rand(4)
PERM = torch.tensor([3, 2, 1, 0])


def _args(**changes):
    args = {"logits_real": REAL, "logits_mixed": MIXED, "y": Y, "y_soft": Y_SOFT, "iou": IOU, "perm": PERM}
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        pytest.param(_args(logits_real=REAL.tolist()), TypeError, "logits_real", id="list-real"),
        pytest.param(_args(logits_mixed=None), TypeError, "logits_mixed", id="none-mixed"),
        pytest.param(_args(logits_real=REAL.long()), TypeError, "logits_real", id="int-real"),
        pytest.param(_args(logits_mixed=MIXED.long()), TypeError, "logits_mixed", id="int-mixed"),
        pytest.param(_args(logits_real=REAL[0]), ValueError, "logits_real", id="rank1-real"),
        pytest.param(_args(logits_real=REAL[:0], logits_mixed=MIXED[:0]), ValueError, "logits_real", id="empty-B"),
        pytest.param(_args(logits_real=REAL[:, :0]), ValueError, "logits_real", id="empty-K"),
        pytest.param(_args(logits_mixed=MIXED[:3]), ValueError, "logits_mixed", id="mixed-short"),
        pytest.param(_args(logits_mixed=MIXED[:, :6]), ValueError, "logits_mixed", id="mixed-wrong-K"),
        pytest.param(_args(logits_mixed=MIXED.to("meta")), ValueError, "logits_mixed", id="meta-mixed"),
        pytest.param(_args(y=Y.int()), TypeError, "y", id="int32-y"),
        pytest.param(_args(y=Y[:3]), ValueError, "y", id="y-short"),
        pytest.param(_args(y=torch.tensor([0, 7, 2, 3])), ValueError, "y", id="y-out-of-range"),
        pytest.param(_args(y=torch.tensor([0, -1, 2, 3])), ValueError, "y", id="y-negative"),
        pytest.param(_args(y_soft=Y), TypeError, "y_soft", id="y_soft-int"),
        pytest.param(_args(y_soft=Y_SOFT[:, :6]), ValueError, "y_soft", id="y_soft-wrong-K"),
        pytest.param(_args(y_soft=Y_SOFT.tolist()), TypeError, "y_soft", id="y_soft-list"),
        pytest.param(_args(iou=IOU[:3]), ValueError, "iou", id="iou-short"),
        pytest.param(_args(iou=IOU[None]), ValueError, "iou", id="iou-rank2"),
        pytest.param(_args(iou=(IOU > 0.5)), TypeError, "iou", id="iou-bool"),
        pytest.param(_args(iou=IOU.to("meta")), ValueError, "iou", id="iou-meta"),
        pytest.param(_args(perm=PERM.float()), TypeError, "perm", id="float-perm"),
        pytest.param(_args(perm=PERM[:2]), ValueError, "perm", id="perm-short"),
        pytest.param(_args(perm=torch.tensor([0, 1, 2, 4])), ValueError, "perm", id="perm-out-of-range"),
    ],
)
def test_facemix_loss_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        ferfast.facemix_loss(**args)


BAD_IOUS = {
    "above-1": [0.2, 1.5, 0.0, 1.0],
    "negative": [0.2, -0.1, 0.0, 1.0],
    "nan": [0.2, math.nan, 0.0, 1.0],
    "inf": [0.2, math.inf, 0.0, 1.0],
}


@pytest.mark.parametrize("bad", list(BAD_IOUS), ids=list(BAD_IOUS))
@pytest.mark.parametrize("backend", [pytest.param("reference", id="reference"), *BACKENDS])
def test_facemix_loss_rejects_iou_outside_unit_interval(backend, bad, device):
    """An IoU outside [0, 1] or NaN is a ValueError naming ``iou`` (the cpu kernels check ``y`` and ``perm``
    but not ``iou``, so the Python check runs for every backend): by default on CPU tensors, with
    ``validate=True`` anywhere; ``value_checks(False)`` and ``validate=False`` turn it off, as for ``perm``."""
    args = {name: t.to(device) for name, t in _args().items()}
    args["iou"] = torch.tensor(BAD_IOUS[bad], device=device)
    if device.type == "cpu":
        with pytest.raises(ValueError, match=r"^iou must hold .* in \[0, 1\]"):
            ferfast.facemix_loss(**args, backend=backend)
    with pytest.raises(ValueError, match="iou"):
        ferfast.facemix_loss(**args, backend=backend, validate=True)
    with ferfast.ops.value_checks(False):
        ferfast.facemix_loss(**args, backend=backend)  # unchecked: the kernel computes whatever it computes
    ferfast.facemix_loss(**args, backend=backend, validate=False)


@pytest.mark.parametrize("backend", [pytest.param("reference", id="reference"), *BACKENDS])
def test_facemix_loss_accepts_iou_at_the_bounds_and_rounding_above_one(backend, device):
    """0 and 1 (the fallback box paired with itself) pass, and so does 1 + one ulp (two nearly equal boxes)."""
    args = {name: t.to(device) for name, t in _args().items()}
    for iou in ([0.0, 1.0, 0.5, 1.0], [1.0 + torch.finfo(torch.float32).eps] * 4):
        args["iou"] = torch.tensor(iou, device=device)
        assert torch.isfinite(ferfast.facemix_loss(**args, backend=backend, validate=True))
