"""fixmatch_loss: FixMatch's unlabeled loss (SSFER stage 2): pseudo-labels, confidence mask, masked CE, gradient."""

import math

import pytest
import torch
import torch.nn.functional as F

import ferfast
from ferfast.reference import fixmatch_loss_ref
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
    ops_missing,
)

OPS = ("fixmatch_loss",)
#: Rows whose max softmax is this close to the threshold are moved away: their mask would be a coin toss.
MARGIN = 1e-4


@pytest.fixture
def device(backend):
    """The backend's device (conftest's fixture), failing if the backend runs here but lacks these ops."""
    return device_with_ops(backend, OPS)


# ---- data --------------------------------------------------------------------------------------


def max_prob(weak: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.softmax(weak.to(dtype), dim=1).max(dim=1).values


def away_from_threshold(weak: torch.Tensor, threshold: float) -> torch.Tensor:
    """Rescale the rows whose max softmax is within MARGIN of the threshold (in float64 or float32 math), except
    rows at exactly 1 in both (a dominant logit), which are well-defined for threshold 1."""
    weak = weak.clone()
    for _ in range(50):
        p64, p32 = max_prob(weak, torch.float64), max_prob(weak, torch.float32).double()
        exact_one = (p64 == 1) & (p32 == 1)
        near = (((p64 - threshold).abs() < MARGIN) | ((p32 - threshold).abs() < MARGIN)) & ~exact_one
        if not bool(near.any()):
            return weak
        weak[near] = (weak[near].double() * 0.8 + 0.01).to(weak.dtype)
    raise AssertionError("could not move the weak logits away from the threshold")


def make_weak(kind: str, b: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Teacher logits: ``random``; ``ties`` (few distinct values: the largest one repeats, the first index wins);
    ``confident`` (half the rows have a dominant logit: softmax exactly 1 even in float64); ``large`` (|z| ~ 50)."""
    if kind == "random":
        weak = torch.randn(b, k) * 3
    elif kind == "ties":
        weak = torch.randint(0, 3, (b, k)).double() * 2.0
        weak[0, :] = 4.0  # a row tied everywhere
        if k > 1:
            weak[-1, -2:] = 9.0  # the tie is at the end of the row
    elif kind == "confident":
        weak = torch.randn(b, k)
        rows = torch.arange(0, b, 2)
        weak[rows, torch.randint(0, k, (len(rows),))] = 60.0
    elif kind == "large":
        weak = torch.randn(b, k) * 50
    else:
        raise ValueError(kind)
    return weak.to(dtype)


def make_inputs(b, k, threshold, kind, dtype, strong_dtype=None):
    weak = away_from_threshold(make_weak(kind, b, k, dtype), threshold)
    strong = (torch.randn(b, k) * 3).to(strong_dtype or dtype)
    return weak, strong


def reference(weak, strong, threshold, dtype=None, weak_dtype=None):
    """(loss, mask_rate, pseudo_labels, mask, grad strong) of the reference, run in ``dtype`` (default: own)."""
    s = leaf(strong, "cpu", dtype)
    loss, rate, pseudo, mask = fixmatch_loss_ref(weak.to(weak_dtype or dtype or weak.dtype), s, threshold)
    loss.backward()
    return loss.detach(), rate, pseudo, mask, s.grad


def check_against_reference(result, grad, weak, strong, threshold):
    loss, rate, pseudo, mask = result
    exact = reference(weak, strong, threshold, torch.float64)
    wide = torch.float64 in (weak.dtype, strong.dtype)
    acc = torch.float64 if wide else torch.float32
    assert loss.dtype == acc and rate.dtype == acc and mask.dtype == acc and pseudo.dtype == torch.long
    assert_identical(pseudo, exact[2], name="pseudo-labels")
    assert_identical(mask, exact[3].to(acc), name="mask")
    assert_close_to_ref(rate, exact[1], name="mask rate")
    assert_close_to_ref(loss, exact[0], name="loss")
    if grad is None:
        return
    assert grad.dtype == strong.dtype
    if strong.dtype in LOW_PRECISION:
        # the teacher's logits only pick labels and mask: they keep their values (and their float64 math)
        ref32 = reference(weak, strong, threshold, torch.float32, weak_dtype=weak.dtype)
        ref_lowp = reference(weak, strong, threshold, weak_dtype=weak.dtype)
        if not wide:
            assert_close_to_ref(loss, ref32[0], ref_lowp[0], name="loss (low-precision rule)")
        assert_close_to_ref(grad, ref32[4], ref_lowp[4], name="grad logits_strong")
    else:
        assert_close_to_ref(grad, exact[4], name="grad logits_strong")


def run(backend, device, weak, strong, threshold, **kwargs):
    sd = leaf(strong, device)
    result = ferfast.fixmatch_loss(weak.to(device), sd, threshold, return_pseudo_labels=True, backend=backend, **kwargs)
    result[0].backward()
    return result, sd.grad


# (B, K, threshold, weak logits kind)
CASES = [
    pytest.param((1, 7, 0.7, "random"), id="B1-K7-t0.7"),
    pytest.param((2, 7, 0.0, "ties"), id="B2-K7-t0-ties"),
    pytest.param((3, 8, 0.95, "random"), id="B3-K8-t0.95"),
    pytest.param((5, 7, 0.3, "ties"), id="B5-K7-t0.3-ties"),
    pytest.param((33, 8, 0.7, "random"), id="B33-K8-t0.7"),
    pytest.param((64, 7, 1.0, "confident"), id="B64-K7-t1-confident"),
    pytest.param((64, 1000, 0.7, "confident"), id="B64-K1000-t0.7-confident"),
    pytest.param((8, 1000, 0.0, "ties"), id="B8-K1000-t0-ties"),
    pytest.param((16, 1000, 0.2, "ties"), id="B16-K1000-t0.2-ties"),
    pytest.param((4, 7, 0.5, "large"), id="B4-K7-t0.5-large"),
    pytest.param((3, 1, 0.7, "random"), id="B3-K1"),
]
CASES_INTERPRETED = [
    pytest.param((1, 7, 0.7, "random"), id="B1-K7-t0.7"),
    pytest.param((2, 7, 0.0, "ties"), id="B2-K7-t0-ties"),
    pytest.param((5, 7, 0.3, "ties"), id="B5-K7-t0.3-ties"),
    pytest.param((6, 8, 1.0, "confident"), id="B6-K8-t1-confident"),
    pytest.param((4, 1000, 0.7, "confident"), id="B4-K1000-t0.7-confident"),
    pytest.param((4, 7, 0.5, "large"), id="B4-K7-t0.5-large"),
    pytest.param((3, 1, 0.7, "random"), id="B3-K1"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED))
def test_fixmatch_loss_matches_reference(backend, case, dtype, device):
    b, k, threshold, kind = case
    weak, strong = make_inputs(b, k, threshold, kind, dtype)
    result, grad = run(backend, device, weak, strong, threshold)
    assert result[0].shape == () and result[1].shape == () and result[2].shape == (b,) and result[3].shape == (b,)
    assert result[0].device.type == device.type
    check_against_reference(result, grad, weak, strong, threshold)
    mask = result[3].cpu()
    if threshold == 0.0:
        assert bool((mask == 1).all())
    if kind == "confident" and threshold == 1.0:  # exactly the rows with a dominant logit
        dominant = max_prob(weak, torch.float64) == 1
        assert bool(dominant.any()) and torch.equal(mask.bool(), dominant)
    if k == 1:
        assert result[0].item() == 0.0 and bool((grad == 0).all())


@pytest.mark.parametrize(
    ("weak_dtype", "strong_dtype"),
    [
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float64),
        (torch.float64, torch.float16),
    ],
    ids=["weak32-strong16b", "weak16b-strong32", "weak16-strong64", "weak64-strong16"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fixmatch_loss_mixed_dtypes(backend, weak_dtype, strong_dtype, device):
    """The EMA teacher and the student may run at different precisions (autocast)."""
    weak, strong = make_inputs(6, 7, 0.5, "random", weak_dtype, strong_dtype)
    result, grad = run(backend, device, weak, strong, 0.5)
    check_against_reference(result, grad, weak, strong, 0.5)


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_fixmatch_loss_by_hand(backend, device):
    """Three rows, K = 3: a confident row, a tie (first index wins) and a very confident row."""
    weak = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    strong = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.9, -1.0], [1.0, 2.0, 0.0]])
    p = [math.exp(2) / (math.exp(2) + 2), math.e / (2 * math.e + 1), math.exp(5) / (math.exp(5) + 2)]
    assert p[1] < 0.6 < p[0] < p[2]

    def ce(row, label):
        m = max(row)
        return m + math.log(sum(math.exp(v - m) for v in row)) - row[label]

    s = strong.tolist()
    for threshold, included in ((0.6, [0, 2]), (0.4, [0, 1, 2])):
        labels = [0, 0, 2]  # the tie [1, 1, 0] gives label 0
        expected = sum(ce(s[i], labels[i]) for i in included) / 3
        sd = leaf(strong, device)
        loss, rate, pseudo, mask = ferfast.fixmatch_loss(
            weak.to(device), sd, threshold, return_pseudo_labels=True, backend=backend
        )
        loss.backward()
        assert pseudo.cpu().tolist() == labels
        assert mask.cpu().tolist() == [float(i in included) for i in range(3)]
        assert rate.item() == pytest.approx(len(included) / 3, rel=1e-6)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        grad = (torch.softmax(strong.double(), 1) - F.one_hot(torch.tensor(labels), 3)) / 3
        grad *= torch.tensor([float(i in included) for i in range(3)], dtype=torch.float64)[:, None]
        assert_close_to_ref(sd.grad, grad, name=f"grad (threshold {threshold})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixmatch_loss_thresholds_0_and_1(backend, device):
    weak, strong = make_inputs(8, 7, 1.0, "confident", torch.float32)
    dominant = max_prob(weak, torch.float64) == 1
    for threshold, expected_mask in ((0.0, torch.ones(8)), (1.0, dominant.float())):
        result, grad = run(backend, device, weak, strong, threshold)
        assert torch.equal(result[3].cpu(), expected_mask)
        assert result[1].item() == pytest.approx(float(expected_mask.mean()))
        check_against_reference(result, grad, weak, strong, threshold)
    nothing = torch.zeros(8, 7)  # uniform teacher: max softmax 1/7, nothing passes 0.5
    result, grad = run(backend, device, nothing, strong, 0.5)
    assert result[0].item() == 0.0 and result[1].item() == 0.0 and bool((grad == 0).all())
    assert result[2].cpu().tolist() == [0] * 8  # all tied: the first index


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixmatch_loss_teacher_gets_no_gradient(backend, device):
    weak, strong = make_inputs(5, 7, 0.5, "random", torch.float32)
    wd, sd = leaf(weak, device), leaf(strong, device)
    loss, rate = ferfast.fixmatch_loss(wd, sd, 0.5, backend=backend)  # two results by default
    loss.backward()
    assert wd.grad is None and sd.grad is not None
    assert not rate.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixmatch_loss_backward_scales_the_stored_gradient(backend, device):
    weak, strong = make_inputs(6, 8, 0.4, "random", torch.float32)
    exact_grad = reference(weak, strong, 0.4, torch.float64)[4]
    sd = leaf(strong, device)
    loss, _ = ferfast.fixmatch_loss(weak.to(device), sd, 0.4, backend=backend)
    (grad,) = torch.autograd.grad(2.5 * loss, sd)
    assert_close_to_ref(grad, 2.5 * exact_grad, name="grad of 2.5*loss")
    sd = leaf(strong, device)
    loss, _ = ferfast.fixmatch_loss(weak.to(device), sd, 0.4, backend=backend)
    (loss - 3 * loss).backward()
    assert_close_to_ref(sd.grad, -2 * exact_grad, name="grad of loss - 3*loss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixmatch_loss_without_grad_and_strided(backend, device):
    weak, strong = make_inputs(6, 7, 0.5, "ties", torch.float32)
    with torch.no_grad():
        result = ferfast.fixmatch_loss(
            weak.to(device), leaf(strong, device), 0.5, return_pseudo_labels=True, backend=backend
        )
    assert not result[0].requires_grad
    check_against_reference(result, None, weak, strong, 0.5)
    w_view, s_view = non_contiguous(weak).to(device), strong.t().contiguous().to(device).t()
    assert not (w_view.is_contiguous() or s_view.is_contiguous())
    result = ferfast.fixmatch_loss(w_view, s_view, 0.5, return_pseudo_labels=True, backend=backend)
    check_against_reference(result, None, weak, strong, 0.5)


# ---- the module, gradcheck, opcheck, argument checks -------------------------------------------


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_fixmatch_loss_module(backend):
    dev = backend_device(backend) if backend is not None else torch.device("cpu")  # skips where it cannot run
    if backend is not None and (reason := ops_missing(backend, OPS)):
        pytest.fail(reason)
    criterion = ferfast.FixMatchLoss(backend=backend)
    assert criterion.threshold == 0.7 and "threshold=0.7" in repr(criterion)
    assert isinstance(criterion, torch.nn.Module) and list(criterion.parameters()) == []
    weak, strong = make_inputs(6, 7, 0.7, "random", torch.float32)
    sd = leaf(strong, dev)
    loss, rate = criterion(weak.to(dev), sd)
    loss.backward()
    exact = reference(weak, strong, 0.7, torch.float64)
    assert_close_to_ref(loss, exact[0], name="module loss")
    assert_close_to_ref(rate, exact[1], name="module mask rate")
    assert_close_to_ref(sd.grad, exact[4], name="module grad")


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "0.7", True, None, float("nan")])
def test_fixmatch_loss_module_rejects_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        ferfast.FixMatchLoss(threshold)


@pytest.mark.ext
@pytest.mark.parametrize(("threshold", "kind"), [(0.5, "random"), (0.0, "ties")])
def test_gradcheck_native(threshold, kind):
    backend_device("cpu")
    weak, strong = make_inputs(4, 5, threshold, kind, torch.float64)
    strong.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: ferfast.fixmatch_loss(weak, s, threshold, backend="cpu")[0], (strong,))


def _opcheck_samples(device, dtype=torch.float32):
    weak, strong = make_inputs(5, 7, 0.5, "random", dtype)
    weak, strong = weak.to(device), strong.to(device)
    ties, _ = make_inputs(5, 7, 0.3, "ties", dtype)
    return [
        (weak, strong.clone().requires_grad_(True), 0.5, True),
        (weak, strong, 0.5, True),
        (weak, strong, 0.0, False),
        (ties.to(device), strong, 0.3, False),
        (weak.float(), strong.to(torch.bfloat16).clone().requires_grad_(True), 1.0, True),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, dtype, device):
    op = getattr(torch.ops, op_namespace(backend)).fixmatch_loss.default
    for args in _opcheck_samples(device, dtype):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compute_grad_false_refuses_logits_that_require_grad(backend, device):
    op = getattr(torch.ops, op_namespace(backend)).fixmatch_loss.default
    weak, strong = make_inputs(3, 7, 0.5, "random", torch.float32)
    *_, grad = op(weak.to(device), strong.to(device), 0.5, False)
    assert grad.numel() == 0
    with pytest.raises(RuntimeError, match="compute_grad"):
        op(weak.to(device), leaf(strong, device), 0.5, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_calls_reject_bad_input(backend, device):
    op = getattr(torch.ops, op_namespace(backend)).fixmatch_loss.default
    weak, strong = torch.randn(4, 7, device=device), torch.randn(4, 7, device=device)
    bad_args = [
        (weak[0], strong[0], 0.5),
        (weak, strong[:3], 0.5),
        (weak, strong[:, :6], 0.5),
        (weak[:0], strong[:0], 0.5),
        (weak[:, :0], strong[:, :0], 0.5),
        (weak.long(), strong, 0.5),
        (weak, strong.long(), 0.5),
        (weak, strong, 1.5),
        (weak, strong, -0.1),
    ]
    for args in bad_args:
        with pytest.raises(direct_call_error(backend)):
            op(*args, False)


WEAK, STRONG = torch.randn(4, 7), torch.randn(4, 7)


@pytest.mark.parametrize(
    ("weak", "strong", "threshold", "error", "match"),
    [
        pytest.param(WEAK.tolist(), STRONG, 0.7, TypeError, "logits_weak_teacher", id="list-weak"),
        pytest.param(WEAK, None, 0.7, TypeError, "logits_strong", id="none-strong"),
        pytest.param(WEAK.long(), STRONG, 0.7, TypeError, "logits_weak_teacher", id="int-weak"),
        pytest.param(WEAK, STRONG.int(), 0.7, TypeError, "logits_strong", id="int-strong"),
        pytest.param(WEAK[0], STRONG[0], 0.7, ValueError, "logits_weak_teacher", id="rank1-weak"),
        pytest.param(WEAK[None], STRONG[None], 0.7, ValueError, "logits_weak_teacher", id="rank3-weak"),
        pytest.param(WEAK[:0], STRONG[:0], 0.7, ValueError, "logits_weak_teacher", id="empty-B"),
        pytest.param(WEAK[:, :0], STRONG[:, :0], 0.7, ValueError, "logits_weak_teacher", id="empty-K"),
        pytest.param(WEAK, STRONG[:3], 0.7, ValueError, "logits_strong", id="strong-short"),
        pytest.param(WEAK, STRONG[:, :6], 0.7, ValueError, "logits_strong", id="strong-wrong-K"),
        pytest.param(WEAK, STRONG.to("meta"), 0.7, ValueError, "logits_strong", id="meta-strong"),
        pytest.param(WEAK, STRONG, -0.01, ValueError, "threshold", id="threshold<0"),
        pytest.param(WEAK, STRONG, 1.01, ValueError, "threshold", id="threshold>1"),
        pytest.param(WEAK, STRONG, float("nan"), ValueError, "threshold", id="threshold-nan"),
        pytest.param(WEAK, STRONG, "0.7", ValueError, "threshold", id="threshold-str"),
        pytest.param(WEAK, STRONG, torch.tensor(0.7), ValueError, "threshold", id="threshold-tensor"),
    ],
)
def test_fixmatch_loss_rejects_bad_input(weak, strong, threshold, error, match):
    with pytest.raises(error, match=match):
        ferfast.fixmatch_loss(weak, strong, threshold)
