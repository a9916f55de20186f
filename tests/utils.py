"""Helpers of ferfast's tests: backends and devices, tolerances, verbose comparisons, data factories.

Tolerances (docs/design.md, Numerical tolerances):

* float64 and float32 results are compared with the exact answer (the reference run in
  float64 on the same input values): about ``1e-10`` and ``1e-5`` relative.
* bfloat16 and float16 results follow flash-attention's rule,
  ``|out - ref_fp32| <= 2 * |ref_lowp - ref_fp32| + atol`` (over the tensor, and by default
  element by element too; see :func:`assert_close_to_ref`), where ``ref_fp32`` is the
  reference run in float32 on the same (low-precision) input values and ``ref_lowp`` the
  reference run in the low dtype itself. A result stored in a low dtype cannot be closer
  than its own rounding, so the bound also grants one unit of roundoff of the output's
  dtype (``eps * |ref_fp32|``, or the subnormal spacing near zero).
* Index outputs and pure copies (gathers, scatters of distinct indices) must be identical,
  bit for bit.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math

import pytest
import torch
from torch import Tensor

import ferfast
from ferfast import _extension

# ---- backends and devices ----------------------------------------------------------------------

CUDA_AVAILABLE = torch.cuda.is_available()
#: Without a GPU, Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (slow: small shapes).
TRITON_INTERPRETED = not CUDA_AVAILABLE

BACKEND_NAMES = ("cpu", "cuda", "triton")
_BACKEND_MARKS = {"cpu": pytest.mark.ext, "cuda": pytest.mark.cuda, "triton": pytest.mark.triton}


@functools.cache
def triton_unavailable_reason() -> str | None:
    """Why ferfast's Triton backend cannot run here (a genuine absence: skip), or ``None`` when it can.

    A broken ``ferfast.triton`` where the ``triton`` package can run is no absence: the calling test fails
    (and ``tests/conftest.py`` stops the run before that).
    """
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if TRITON_INTERPRETED and ferfast.backends.triton_available("cpu") is False:
        return "no GPU and TRITON_INTERPRET is not 1"
    try:
        importlib.import_module("ferfast.triton")
    except Exception as exc:  # triton can run here: a failing import is a bug, not an absence
        pytest.fail(f"triton is installed but import ferfast.triton failed: {type(exc).__name__}: {exc}")
    return None


def backend_unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (the caller skips), or ``None``; fails the caller when the install
    promises the backend but it did not load (see ``ferfast._extension.load_problems``)."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if _extension.HAS_OPS:
            return None
        if _extension.EXPECTED and not _extension.DISABLED:
            pytest.fail(f"the build installed ferfast._C but it did not load: {_extension.LOAD_ERROR}")
        return f"native library not loaded: {_extension.LOAD_ERROR}"
    if backend == "cuda":
        if not CUDA_AVAILABLE:
            return "no CUDA GPU"
        if _extension.HAS_CUDA_OPS:
            return None
        if _extension.EXPECTED_CUDA and not _extension.DISABLED:
            pytest.fail(f"the build compiled the CUDA kernels but they did not load: {_extension.LOAD_ERROR}")
        return f"native library without CUDA kernels ({_extension.LOAD_ERROR or 'built without CUDA'})"
    if backend == "triton":
        return triton_unavailable_reason()
    raise ValueError(f"unknown backend {backend!r}")


def backend_device(backend: str) -> torch.device:
    """Device of a backend's inputs: cpu -> cpu, cuda -> cuda, triton -> cuda if there is one, else cpu
    (reference -> cpu).

    Skips the calling test when the backend cannot run here.
    """
    reason = backend_unavailable_reason(backend)
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable: {reason}")
    if backend == "cuda" or (backend == "triton" and CUDA_AVAILABLE):
        return torch.device("cuda")
    return torch.device("cpu")


def is_interpreted(backend: str) -> bool:
    return backend == "triton" and TRITON_INTERPRETED


#: ``@pytest.mark.parametrize("backend", BACKENDS)``; the ``device`` fixture maps it to a device.
BACKENDS = [pytest.param(b, marks=_BACKEND_MARKS[b], id=b) for b in BACKEND_NAMES]


def backend_cases(full: list, small: list | None = None, backends=BACKEND_NAMES) -> list:
    """``(backend, case)`` params: every backend gets ``full``, except interpreted Triton which gets ``small``.

    ``full``/``small`` hold ``pytest.param(...)`` or plain values; ids combine the backend and the case.
    """
    out = []
    for backend in backends:
        cases = small if (is_interpreted(backend) and small is not None) else full
        for case in cases:
            if isinstance(case, type(pytest.param(None))):
                values, marks, case_id = case.values, list(case.marks), case.id
            else:
                values, marks, case_id = (case,), [], None
            case_id = case_id or "-".join(map(str, values))
            marks = [_BACKEND_MARKS[backend], *marks]
            out.append(pytest.param(backend, *values, marks=marks, id=f"{backend}-{case_id}"))
    return out


DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.float64, id="fp64"),
]
LOW_PRECISION = (torch.bfloat16, torch.float16)
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


# ---- comparisons -------------------------------------------------------------------------------


def _report(actual: Tensor, expected: Tensor, bound: Tensor, name: str, rule: str, max_print: int = 10) -> str:
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    bound = bound.detach().double().cpu().expand_as(e)
    err = (a - e).abs()
    bad = ~(err <= bound)  # NaN errors are mismatches too
    n_bad = int(bad.sum())
    excess = torch.where(bad, torch.nan_to_num(err - bound, nan=math.inf, posinf=math.inf), -math.inf)
    order = torch.argsort(excess.reshape(-1), descending=True)[: min(max_print, n_bad)]
    lines = [
        f"{name}: {n_bad} of {e.numel()} elements mismatch ({rule}); shape {tuple(e.shape)}, "
        f"dtype {actual.dtype}; max abs error {float(err.max()) if err.numel() else 0.0:.6g}, "
        f"max |expected| {float(e.abs().max()) if e.numel() else 0.0:.6g}",
        "  worst elements:  index  actual  expected  |error|  allowed",
    ]
    for flat in order.tolist():
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape)) if e.dim() else ()
        lines.append(
            f"    {idx}  {a.reshape(-1)[flat].item():.9g}  {e.reshape(-1)[flat].item():.9g}  "
            f"{err.reshape(-1)[flat].item():.3g}  {bound.reshape(-1)[flat].item():.3g}"
        )
    return "\n".join(lines)


def _check_meta(actual: Tensor, expected: Tensor, name: str, dtype: torch.dtype | None) -> None:
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    )
    if dtype is not None:
        assert actual.dtype == dtype, f"{name}: dtype {actual.dtype}, expected {dtype}"


def assert_verbose_allclose(
    actual: Tensor, expected: Tensor, rtol: float, atol: float, *, name: str = "tensor", dtype=None
) -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` elementwise; prints the worst elements on failure."""
    _check_meta(actual, expected, name, dtype)
    e = expected.detach().double().cpu()
    bound = atol + rtol * e.abs()
    err = (actual.detach().double().cpu() - e).abs()
    if not bool((err <= bound).all()):
        raise AssertionError(_report(actual, expected, bound, name, f"rtol={rtol:g}, atol={atol:g}"))


def assert_close_to_ref(
    out: Tensor,
    ref: Tensor,
    ref_lowp: Tensor | None = None,
    *,
    name: str,
    dtype: torch.dtype | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    elementwise: bool = True,
) -> None:
    """Compare a result with the reference (see the module docstring for the rules).

    ``ref_lowp is None``: ``ref`` is the exact answer (float64 reference) and ``out`` must be within
    ``rtol`` (``RTOL[out.dtype]``), with ``atol = rtol * max|ref|`` so that tiny elements of a tensor
    are judged at the tensor's scale. Otherwise ``ref`` is the float32 reference, ``ref_lowp`` the
    low-precision one, and flash-attention's rule applies with ``atol`` (default ``1e-6 * max|ref|``):
    over the whole tensor, ``max|out - ref| <= 2 * max|ref_lowp - ref| + atol`` (flash-attention's
    own form) and, with ``elementwise`` (the default), element by element as well. Elementwise is
    right for results computed in fp32 and rounded once; a result that went through a low-precision
    matmul carries rounding errors as random as the reference's own, and only the tensor-wide
    form applies to it.
    """
    _check_meta(out, ref, name, dtype)
    r = ref.detach().double().cpu()
    scale = float(r.abs().max()) if r.numel() else 0.0
    if ref_lowp is None:
        rtol = RTOL[out.dtype] if rtol is None else rtol
        atol = rtol * scale if atol is None else atol
        assert_verbose_allclose(out, ref, rtol, atol, name=name)
        return
    _check_meta(ref_lowp, ref, name + " (ref_lowp)", None)
    atol = 1e-6 * scale if atol is None else atol
    lowp_err = (ref_lowp.detach().double().cpu() - r).abs()
    err = (out.detach().double().cpu() - r).abs()
    if r.numel() == 0:
        return
    max_bound = 2 * float(lowp_err.max()) + atol + float(roundoff(out.dtype, r).max())
    if not float(err.max()) <= max_bound:
        rule = f"max|out - ref_fp32| <= 2*max|ref_lowp - ref_fp32| + {atol:.3g} + roundoff = {max_bound:.3g}"
        raise AssertionError(_report(out, ref, torch.full_like(r, max_bound), name, rule))
    if elementwise:
        bound = 2 * lowp_err + atol + roundoff(out.dtype, r)
        if not bool((err <= bound).all()):
            rule = f"|out - ref_fp32| <= 2*|ref_lowp - ref_fp32| + {atol:.3g} + roundoff(|ref_fp32|) elementwise"
            raise AssertionError(_report(out, ref, bound, name, rule))


def roundoff(dtype: torch.dtype, ref: Tensor) -> Tensor:
    """One rounding of ``ref`` to ``dtype``, generously: a unit in the last place, or the subnormal spacing."""
    info = torch.finfo(dtype)
    return info.eps * ref.abs() + info.smallest_normal * info.eps


def assert_identical(actual: Tensor, expected: Tensor, *, name: str) -> None:
    """Same shape, dtype and values bit for bit (``-0.0`` and ``0.0`` differ; NaNs must be the same NaN)."""
    _check_meta(actual, expected, name, expected.dtype)
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if a.is_floating_point():
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
        same = a.contiguous().view(bits) == e.contiguous().view(bits)
    else:
        same = a == e
    if not bool(same.all()):
        bound = torch.where(same, math.inf, -1.0).double()  # every differing element is reported
        raise AssertionError(_report(a, e, bound, name, "bit-identical") + _bits_hint(a, e, same))


def _bits_hint(a: Tensor, e: Tensor, same: Tensor) -> str:
    if a.is_floating_point() and bool((a == e)[~same].all()):
        return "\n  (values compare equal: the mismatch is in the sign of zero)"
    return ""


# ---- data factories ----------------------------------------------------------------------------


def make_noise(kind: str, batch: int, length: int, dtype: torch.dtype) -> Tensor:
    """``[B, L]`` masking noise on the CPU; the awkward kinds stress ties and special values."""
    if kind == "uniform":  # MAE's torch.rand; in bf16/fp16 rounding makes many ties
        return torch.rand(batch, length).to(dtype)
    if kind == "ties":  # only three distinct values: order decided by the index
        return (torch.randint(0, 3, (batch, length)).double() / 2).to(dtype)
    if kind == "signed_zero":  # -0.0 and +0.0 must tie (and be ordered by index)
        values = torch.tensor([-0.0, 0.0, 0.0, -0.0, 0.5, -0.5], dtype=torch.float64)
        return values[torch.randint(0, values.numel(), (batch, length))].to(dtype)
    if kind == "special":  # infinities, extremes, subnormals, signed zeros, mixed with normal values
        info = torch.finfo(dtype)
        values = torch.tensor(
            [
                -math.inf,
                math.inf,
                info.max,
                -info.max,
                info.tiny,
                -info.tiny,
                info.smallest_normal / 4,
                -0.0,
                0.0,
                1.0,
                -1.0,
                0.25,
            ],
            dtype=torch.float64,
        ).to(dtype)
        picks = values[torch.randint(0, values.numel(), (batch, length))]
        return torch.where(torch.rand(batch, length) < 0.5, picks, torch.randn(batch, length).to(dtype))
    if kind == "constant":
        return torch.full((batch, length), 0.5, dtype=dtype)
    if kind == "sorted":
        return torch.linspace(1, 0, length, dtype=torch.float64).expand(batch, length).to(dtype).contiguous()
    raise ValueError(kind)


def make_mask(kind: str, batch: int, length: int, dtype: torch.dtype) -> Tensor:
    """``[B, L]`` MAE mask (1 = removed) on the CPU."""
    if kind.startswith("ratio"):  # e.g. "ratio0.75": random_masking's mask
        ratio = float(kind[len("ratio") :])
        return ferfast.reference.random_masking_ref(torch.rand(batch, length), ratio)[1].to(dtype)
    if kind == "rows":  # whole rows removed or kept: rows alternate all-masked / unmasked
        mask = torch.zeros(batch, length)
        mask[0::2] = 1
        return mask.to(dtype)
    if kind == "none":
        return torch.zeros(batch, length, dtype=dtype)
    if kind == "all":
        return torch.ones(batch, length, dtype=dtype)
    if kind == "weights":  # any non-negative weights are legal
        return torch.rand(batch, length).to(dtype)
    raise ValueError(kind)


def make_imgs(batch: int, channels: int, height: int, width: int, dtype: torch.dtype, constant_patch: int = 0):
    """Normalised images; with ``constant_patch=p`` the top-left p x p patch is constant (zero variance)."""
    imgs = torch.randn(batch, channels, height, width)
    if constant_patch:  # 0.5: its sums are exact in any order and precision, so the variance is exactly 0
        imgs[:, :, :constant_patch, :constant_patch] = 0.5
    return imgs.to(dtype)


def leaf(t: Tensor, device, dtype: torch.dtype | None = None) -> Tensor:
    """A fresh leaf on ``device`` that requires grad."""
    return t.detach().to(device=device, dtype=dtype or t.dtype).clone().requires_grad_(True)


def non_contiguous(t: Tensor) -> Tensor:
    """The same values in a non-contiguous layout (every other element of a twice-as-long last dim)."""
    wide = torch.stack([t, torch.full_like(t, 7)], dim=-1)
    out = wide[..., 0]
    assert not out.is_contiguous() or t.numel() <= 1
    return out


# ---- op registration ---------------------------------------------------------------------------


def op_namespace(backend: str) -> str:
    """The ``torch.ops`` namespace of a backend's ops."""
    return "ferfast_triton" if backend == "triton" else "ferfast"


#: What a direct ``torch.ops`` call with bad arguments raises, per backend (the public ops raise ValueError/TypeError
#: before any backend runs; docs/ops.md): the C++ ops' TORCH_CHECK_VALUE/TORCH_CHECK_TYPE (ValueError/TypeError),
#: the Triton hosts' invariant checks (AssertionError).
DIRECT_CALL_ERRORS: dict[str, type[Exception] | tuple[type[Exception], ...]] = {
    "cpu": (ValueError, TypeError),
    "cuda": (ValueError, TypeError),
    "triton": AssertionError,
}


def direct_call_error(backend: str) -> type[Exception] | tuple[type[Exception], ...]:
    return DIRECT_CALL_ERRORS[backend]


def ops_missing(backend: str, ops) -> str | None:
    """Why ``backend`` cannot serve ``ops`` (the first one not registered), or ``None``."""
    ns = op_namespace(backend)
    missing = [op for op in ops if not hasattr(getattr(torch.ops, ns), op)]
    return f"{ns}::{missing[0]} is not registered (the backend runs here)" if missing else None


def device_with_ops(backend: str, ops) -> torch.device:
    """:func:`backend_device` (skips where the backend cannot run), failing if the backend runs here but lacks
    one of ``ops``."""
    dev = backend_device(backend)
    if backend != "reference" and (reason := ops_missing(backend, ops)):
        pytest.fail(reason)
    return dev


# ---- tiny datasets ---------------------------------------------------------------------------------

#: The engine and CLI tests' synthetic dataset: 8 people, 56 train and 21 test faces of 32x32, and 32 unlabeled
#: faces of 4 other people (what a stage-1 and stage-2 run needs, in a few seconds).
TINY_FACES = dict(num_train=56, num_test=21, num_unlabeled=32, num_identities=8, num_unlabeled_identities=4)


def write_tiny_faces(root, size: int = 32, **counts: int):
    """Write :data:`TINY_FACES` (``counts`` overrides its numbers) as JPEG files under ``root``; returns ``root``."""
    from ferfast.data import write_synthetic_dataset
    from ferfast.data.synthetic import SyntheticFaceConfig

    write_synthetic_dataset(root, config=SyntheticFaceConfig(size=size), workers=1, **{**TINY_FACES, **counts})
    return root
