"""mixup_soft_targets: timm's ``mixup_target`` with an explicit partner (label smoothing, scalar or per-sample lam)."""

import numpy as np
import pytest
import timm.data.mixup
import torch

import ferfast
from ferfast.reference import flip_perm, mixup_soft_targets_ref
from tests.utils import (
    BACKENDS,
    assert_close_to_ref,
    backend_cases,
    backend_device,
    device_with_ops,
    direct_call_error,
    non_contiguous,
    op_namespace,
)

OPS = ("mixup_soft_targets",)


@pytest.fixture
def device(backend):
    """The backend's device (conftest's fixture), failing if the backend runs here but lacks these ops."""
    return device_with_ops(backend, OPS)


def make_perm(kind: str, b: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "flip":
        return flip_perm(b)
    if kind == "random":
        return torch.randperm(b)
    if kind == "repeated":  # not a permutation
        return torch.randint(0, b, (b,))
    raise ValueError(kind)


def make_lam(kind: str, b: int):
    """A number, a 0-d tensor, or per-sample [B] (float32, or float64: then the targets are float64)."""
    if kind in ("0", "1", "0.37"):
        return float(kind)
    if kind == "tensor0d":
        return torch.tensor(0.61)
    if kind == "per_sample":
        lam = torch.rand(b)
        lam[0::3] = 1.0
        lam[1::3] = 0.0
        return lam
    if kind == "per_sample_fp64":
        return torch.rand(b, dtype=torch.float64)
    if kind == "tensor0d_fp64":
        return torch.tensor(0.2, dtype=torch.float64)
    raise ValueError(kind)


def out_dtype(lam) -> torch.dtype:
    return torch.float64 if isinstance(lam, torch.Tensor) and lam.dtype == torch.float64 else torch.float32


def exact_reference(y, k, lam, perm, smoothing):
    """The reference in float64 on the lam values the op sees (float32 unless lam is a float64 tensor)."""
    lam64 = torch.as_tensor(lam, dtype=out_dtype(lam)).double()
    return mixup_soft_targets_ref(y, k, lam64, perm, smoothing)


# (B, K, lam kind, perm kind, label_smoothing)
CASES = [
    pytest.param((1, 7, "0.37", "flip", 0.1), id="B1-K7-flip"),
    pytest.param((2, 7, "0", "none", 0.1), id="B2-K7-lam0-default"),
    pytest.param((2, 8, "1", "flip", 0.0), id="B2-K8-lam1-nosmooth"),
    pytest.param((3, 7, "tensor0d", "flip", 1.0), id="B3-K7-smooth1"),
    pytest.param((5, 8, "per_sample", "random", 0.1), id="B5-K8-per_sample-random"),
    pytest.param((33, 7, "per_sample", "repeated", 0.2), id="B33-K7-per_sample-repeated"),
    pytest.param((64, 1000, "0.37", "random", 0.1), id="B64-K1000"),
    pytest.param((64, 8, "per_sample_fp64", "flip", 0.1), id="B64-K8-lam_fp64"),
    pytest.param((4, 1, "tensor0d_fp64", "repeated", 0.5), id="B4-K1-lam_fp64"),
    pytest.param((7, 1000, "per_sample", "flip", 0.0), id="B7-K1000-per_sample"),
]
CASES_INTERPRETED = [c for c in CASES if c.id not in ("B64-K1000", "B33-K7-per_sample-repeated")]


@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED))
def test_mixup_soft_targets_matches_reference(backend, case, device):
    b, k, lam_kind, perm_kind, smoothing = case
    y = torch.randint(0, k, (b,))
    y[0] = k - 1
    lam, perm = make_lam(lam_kind, b), make_perm(perm_kind, b)
    out = ferfast.mixup_soft_targets(
        y.to(device),
        k,
        lam.to(device) if isinstance(lam, torch.Tensor) else lam,
        None if perm is None else perm.to(device),
        smoothing,
        backend=backend,
    )
    assert out.shape == (b, k) and out.dtype == out_dtype(lam) and out.device.type == device.type
    perm = flip_perm(b) if perm is None else perm
    exact = exact_reference(y, k, lam, perm, smoothing)
    assert_close_to_ref(out, exact, name="soft targets")
    assert_close_to_ref(out.sum(1), torch.ones(b, dtype=torch.float64), name="rows sum to 1")
    if lam_kind == "1":  # the image's own smoothed one-hot
        assert_close_to_ref(out, exact_reference(y, k, 1.0, torch.arange(b), smoothing), name="lam=1")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixup_soft_targets_strided_inputs(backend, device):
    y, lam, perm = torch.randint(0, 7, (6,)), torch.rand(6), torch.randperm(6)
    out = ferfast.mixup_soft_targets(
        non_contiguous(y).to(device),
        7,
        non_contiguous(lam).to(device),
        non_contiguous(perm).to(device),
        0.1,
        backend=backend,
    )
    assert_close_to_ref(out, exact_reference(y, 7, lam, perm, 0.1), name="soft targets (strided inputs)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixup_soft_targets_hand_example(backend, device):
    """K = 4, s = 0.2: on = 1 - 0.2 + 0.05 = 0.85, off = 0.05; lam = 0.75 mixes labels 1 and 3."""
    y = torch.tensor([1, 3], device=device)
    out = ferfast.mixup_soft_targets(y, 4, 0.75, label_smoothing=0.2, backend=backend)
    expected = torch.tensor(
        [
            [0.05, 0.75 * 0.85 + 0.25 * 0.05, 0.05, 0.75 * 0.05 + 0.25 * 0.85],
            [0.05, 0.25 * 0.85 + 0.75 * 0.05, 0.05, 0.25 * 0.05 + 0.75 * 0.85],
        ],
        dtype=torch.float64,
    )
    assert_close_to_ref(out, expected, name="hand example")


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_soft_labels_are_smoothed_and_mixed(backend):
    """[B, K] soft labels (FERPlus' vote distributions) take the plain-torch path on every backend."""
    dev = backend_device(backend)
    probs = torch.softmax(torch.randn(5, 8), dim=1)
    lam, perm = torch.rand(5), torch.tensor([4, 0, 0, 2, 1])
    out = ferfast.mixup_soft_targets(probs.to(dev), 8, lam.to(dev), perm.to(dev), 0.1, backend=backend)
    y1 = probs.double() * 0.9 + 0.1 / 8
    lam_c = lam.double()[:, None]
    assert_close_to_ref(out, y1 * lam_c + y1[perm] * (1 - lam_c), name="soft labels")
    assert out.dtype == torch.float32


# ---- timm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7316, 1.0])
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_equals_timm_mixup_target(backend, lam, smoothing):
    """``timm.data.mixup.mixup_target(target, num_classes, lam, smoothing)`` is flip pairing."""
    dev = backend_device(backend)
    for b, k in ((8, 7), (5, 8), (4, 1000)):
        y = torch.randint(0, k, (b,))
        expected = timm.data.mixup.mixup_target(y, k, lam, smoothing)
        out = ferfast.mixup_soft_targets(y.to(dev), k, lam, label_smoothing=smoothing, backend=backend)
        assert_close_to_ref(out, expected.double(), name=f"vs timm (B={b}, K={k})")


@pytest.mark.parametrize("mode", ["batch", "elem", "pair"])
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_equals_timm_mixup_call(backend, mode):
    """timm's ``Mixup(x, target)`` in its three modes (the lam it draws is ours to choose)."""
    dev = backend_device(backend)
    b, k, smoothing = 8, 7, 0.1
    mixup = timm.data.mixup.Mixup(
        mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=smoothing, num_classes=k, mode=mode
    )
    draws = np.array([0.2, 0.9, 1.0, 0.0, 0.45, 0.7, 0.33, 0.81], dtype=np.float32)
    mixup._params_per_batch = lambda: (0.4321, False)
    mixup._params_per_elem = lambda n: (draws[:n].copy(), np.zeros(n, dtype=bool))
    y = torch.randint(0, k, (b,))
    _, expected = mixup(torch.randn(b, 3, 4, 4), y)
    if mode == "batch":
        lam = 0.4321
    elif mode == "elem":
        lam = torch.from_numpy(draws)
    else:
        lam = torch.from_numpy(np.concatenate([draws[: b // 2], draws[: b // 2][::-1]]))
    lam = lam.to(dev) if isinstance(lam, torch.Tensor) else lam
    out = ferfast.mixup_soft_targets(y.to(dev), k, lam, label_smoothing=smoothing, backend=backend)
    assert_close_to_ref(out, expected.double(), name=f"vs timm Mixup ({mode})")


# ---- opcheck, argument checks ------------------------------------------------------------------


def _opcheck_samples(device):
    y = torch.tensor([0, 6, 3, 3, 1], device=device)
    perm = torch.tensor([4, 0, 0, 2, 1], device=device)
    return [
        (y, 7, torch.tensor(0.3, device=device), flip_perm(5, device), 0.1),
        (y, 7, torch.rand(5, device=device), perm, 0.0),
        (y, 1000, torch.rand(5, device=device, dtype=torch.float64), perm, 1.0),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    op = getattr(torch.ops, op_namespace(backend)).mixup_soft_targets.default
    for args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_calls_reject_bad_input(backend, device):
    op = getattr(torch.ops, op_namespace(backend)).mixup_soft_targets.default
    y, lam, perm = torch.tensor([0, 1, 2], device=device), torch.rand(3, device=device), flip_perm(3, device)
    bad_args = [
        (y[None], 7, lam, perm, 0.1),
        (y.int(), 7, lam, perm, 0.1),
        (y.float(), 7, lam, perm, 0.1),
        (y, 0, lam, perm, 0.1),
        (y, 7, lam[:2], perm, 0.1),
        (y, 7, lam, perm[:2], 0.1),
        (y, 7, lam, perm.int(), 0.1),
        (y, 7, lam, perm, 1.5),
        (y, 7, lam, perm, -0.1),
    ]
    for args in bad_args:
        with pytest.raises(direct_call_error(backend)):
            op(*args)


Y = torch.tensor([0, 6, 2, 3])
PERM = torch.tensor([3, 2, 1, 0])


@pytest.mark.parametrize(
    ("y", "num_classes", "lam", "kwargs", "error", "match"),
    [
        pytest.param(Y.tolist(), 7, 0.5, {}, TypeError, "y", id="list-y"),
        pytest.param(Y.int(), 7, 0.5, {}, TypeError, "y", id="int32-y"),
        pytest.param(Y.float(), 7, 0.5, {}, TypeError, "y", id="float-y"),
        pytest.param(Y[None], 7, 0.5, {}, ValueError, "y", id="y-wrong-K"),
        pytest.param(Y[:, None, None], 7, 0.5, {}, ValueError, "y", id="y-rank3"),
        pytest.param(Y, 6, 0.5, {}, ValueError, "y", id="y-out-of-range"),
        pytest.param(torch.tensor([0, -1, 2, 3]), 7, 0.5, {}, ValueError, "y", id="y-negative"),
        pytest.param(Y, 0, 0.5, {}, ValueError, "num_classes", id="num_classes-0"),
        pytest.param(Y, 7.0, 0.5, {}, ValueError, "num_classes", id="num_classes-float"),
        pytest.param(Y, 7, 1.01, {}, ValueError, "lam", id="lam>1"),
        pytest.param(Y, 7, -0.5, {}, ValueError, "lam", id="lam<0"),
        pytest.param(Y, 7, torch.tensor([0.5, 1.5, 0.5, 0.5]), {}, ValueError, "lam", id="lam-tensor>1"),
        pytest.param(Y, 7, torch.rand(3), {}, ValueError, "lam", id="lam-wrong-length"),
        pytest.param(Y, 7, torch.ones(4, dtype=torch.long), {}, TypeError, "lam", id="lam-int-tensor"),
        pytest.param(Y, 7, None, {}, TypeError, "lam", id="lam-none"),
        pytest.param(Y, 7, 0.5, {"label_smoothing": 1.5}, ValueError, "label_smoothing", id="smoothing>1"),
        pytest.param(Y, 7, 0.5, {"label_smoothing": -0.1}, ValueError, "label_smoothing", id="smoothing<0"),
        pytest.param(Y, 7, 0.5, {"label_smoothing": "0.1"}, ValueError, "label_smoothing", id="smoothing-str"),
        pytest.param(Y, 7, 0.5, {"perm": PERM.int()}, TypeError, "perm", id="int32-perm"),
        pytest.param(Y, 7, 0.5, {"perm": PERM[:3]}, ValueError, "perm", id="perm-short"),
        pytest.param(Y, 7, 0.5, {"perm": torch.tensor([0, 1, 2, 4])}, ValueError, "perm", id="perm-out-of-range"),
        pytest.param(Y, 7, 0.5, {"perm": PERM.to("meta")}, ValueError, "perm", id="perm-meta"),
        pytest.param(torch.rand(4, 6), 7, 0.5, {}, ValueError, "y", id="soft-y-wrong-K"),
        pytest.param(torch.ones(4, 7, dtype=torch.long), 7, 0.5, {}, TypeError, "y", id="soft-y-int"),
    ],
)
def test_mixup_soft_targets_rejects_bad_input(y, num_classes, lam, kwargs, error, match):
    with pytest.raises(error, match=match):
        ferfast.mixup_soft_targets(y, num_classes, lam, **kwargs)
