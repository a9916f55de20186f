"""random_masking: every backend gives MAE's (stable) masking, bit for bit."""

import pytest
import torch

import ferfast
from ferfast.reference import num_kept, random_masking_ref
from tests.utils import (
    BACKENDS,
    DTYPES,
    assert_identical,
    backend_cases,
    backend_device,
    is_interpreted,
    make_noise,
    non_contiguous,
)

# (B, L): MAE's 14x14 grid, B=1, odd and non-power-of-two lengths, L=1, a long row.
SHAPES = [(1, 196), (2, 196), (3, 49), (4, 50), (2, 576), (2, 1), (5, 10), (16, 196)]
SHAPES_INTERPRETED = [(1, 196), (2, 49), (2, 10), (1, 1)]
RATIOS = [0.0, 0.5, 0.75, 0.9, 0.99]


def shape_cases(shapes):
    return [pytest.param(s, id=f"B{s[0]}-L{s[1]}") for s in shapes]


def run_and_compare(noise: torch.Tensor, mask_ratio: float, backend: str, device) -> None:
    ids_keep, mask, ids_restore = ferfast.random_masking(noise.to(device), mask_ratio, backend=backend)
    ref_keep, ref_mask, ref_restore = random_masking_ref(noise, mask_ratio)
    for t in (ids_keep, mask, ids_restore):
        assert t.device.type == device.type
    assert_identical(ids_keep, ref_keep, name="ids_keep")
    assert_identical(ids_restore, ref_restore, name="ids_restore")
    assert_identical(mask, ref_mask, name="mask")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_ratio", RATIOS)
@pytest.mark.parametrize(("backend", "shape"), backend_cases(shape_cases(SHAPES), shape_cases(SHAPES_INTERPRETED)))
def test_random_masking_matches_reference(backend, shape, mask_ratio, dtype, device):
    batch, length = shape
    noise = make_noise("uniform", batch, length, dtype)
    ids_keep, mask, ids_restore = ferfast.random_masking(noise.to(device), mask_ratio, backend=backend)
    k = num_kept(length, mask_ratio)
    assert ids_keep.shape == (batch, k) and ids_keep.dtype == torch.int64
    assert mask.shape == (batch, length) and mask.dtype == dtype
    assert ids_restore.shape == (batch, length) and ids_restore.dtype == torch.int64
    run_and_compare(noise, mask_ratio, backend, device)


NOISE_KINDS = ["ties", "signed_zero", "special", "constant", "sorted", "uniform"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_ties_and_special_values(backend, kind, dtype, device):
    """Ties are broken by patch index, -0.0 ties with +0.0, infinities and subnormals sort as numbers."""
    batch, length = (2, 49) if is_interpreted(backend) else (4, 196)
    noise = make_noise(kind, batch, length, dtype)
    run_and_compare(noise, 0.75, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_bf16_noise_has_many_ties(backend, device):
    """MAE-style ``torch.rand`` noise drawn in bf16 repeats values: the order must still be the stable one."""
    batch, length = (2, 196) if is_interpreted(backend) else (8, 576)
    noise = torch.rand(batch, length, dtype=torch.bfloat16)
    assert noise[0].unique().numel() < 0.8 * length  # the case is what it claims to be: many ties
    run_and_compare(noise, 0.75, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_signed_zero_order(backend, device):
    """A hand-made row: -0.0 and +0.0 are equal, so index order decides."""
    noise = torch.tensor([[0.0, -0.0, -1.0, 0.0, -0.0, 2.0, -0.0, 1.0]])
    ids_keep, mask, ids_restore = ferfast.random_masking(noise.to(device), 0.5, backend=backend)
    assert ids_keep.cpu().tolist() == [[2, 0, 1, 3]]
    assert ids_restore.cpu().tolist() == [[1, 2, 0, 3, 4, 7, 5, 6]]
    assert mask.cpu().tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("length", "mask_ratio", "expected"),
    [(10, 0.9, 0), (10, 0.7, 3), (10, 0.3, 7), (196, 0.75, 49), (196, 0.99, 1), (49, 0.99, 0), (1, 0.0, 1)],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_keeps_python_int_of_length_times_one_minus_ratio(backend, length, mask_ratio, expected, device):
    """K = int(L * (1 - mask_ratio)) in double precision: e.g. 10 * (1 - 0.9) = 0.999... gives K = 0."""
    assert num_kept(length, mask_ratio) == int(length * (1 - mask_ratio)) == expected
    ids_keep, mask, _ = ferfast.random_masking(torch.rand(2, length, device=device), mask_ratio, backend=backend)
    assert ids_keep.shape == (2, expected)
    assert mask.sum(dim=1).cpu().tolist() == [float(length - expected)] * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_non_contiguous_noise(backend, device):
    batch, length = (2, 49) if is_interpreted(backend) else (3, 196)
    noise = make_noise("uniform", batch, length, torch.float32)
    transposed = noise.t().contiguous().t()
    strided = non_contiguous(noise)
    for view in (transposed, strided):
        assert not view.is_contiguous()
        ids_keep, mask, ids_restore = ferfast.random_masking(view.to(device), 0.75, backend=backend)
        ref = random_masking_ref(noise, 0.75)
        assert_identical(ids_keep, ref[0], name="ids_keep")
        assert_identical(mask, ref[1], name="mask")
        assert_identical(ids_restore, ref[2], name="ids_restore")


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_is_deterministic(backend, device):
    noise = make_noise("ties", 2, 49, torch.float32).to(device)
    first = ferfast.random_masking(noise, 0.75, backend=backend)
    second = ferfast.random_masking(noise, 0.75, backend=backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_hypothesis_ties(backend):
    """Property test: rows drawn from a handful of values (including -0.0) give the stable order."""
    device = backend_device(backend)
    hypothesis = pytest.importorskip("hypothesis")  # a dev dependency; the GPU machine may lack it
    given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies
    examples = 10 if is_interpreted(backend) else 60

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(
        batch=st.integers(1, 3),
        length=st.integers(1, 70),
        ratio=st.sampled_from(RATIOS),
        dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
        data=st.data(),
    )
    def check(batch, length, ratio, dtype, data):
        size = batch * length
        values = data.draw(st.lists(st.sampled_from([-0.0, 0.0, 0.5, -1.5, 1e-3, 3.0]), min_size=size, max_size=size))
        noise = torch.tensor(values, dtype=torch.float64).reshape(batch, length).to(dtype)
        run_and_compare(noise, ratio, backend, device)

    check()


def test_reference_is_maes_argsort_for_distinct_noise():
    """Without ties the stable order is MAE's plain ``argsort`` (``models_mae.py:random_masking``)."""
    noise = torch.rand(4, 196, dtype=torch.float64)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    len_keep = int(196 * (1 - 0.75))
    mask = torch.ones(4, 196, dtype=torch.float64)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    ref_keep, ref_mask, ref_restore = random_masking_ref(noise, 0.75)
    assert torch.equal(ref_keep, ids_shuffle[:, :len_keep])
    assert torch.equal(ref_restore, ids_restore)
    assert torch.equal(ref_mask, mask)


# ---- registration, argument checks -------------------------------------------------------------


@pytest.mark.ext
@pytest.mark.parametrize("mask_ratio", [0.0, 0.75, 0.99])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_native(mask_ratio, dtype):
    backend_device("cpu")
    torch.library.opcheck(torch.ops.ferfast.random_masking.default, (make_noise("ties", 3, 20, dtype), mask_ratio))


@pytest.mark.triton
@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_opcheck_triton(mask_ratio):
    device = backend_device("triton")
    noise = make_noise("ties", 2, 20, torch.float32).to(device)
    torch.library.opcheck(torch.ops.ferfast_triton.random_masking.default, (noise, mask_ratio))


@pytest.mark.parametrize(
    ("noise", "mask_ratio", "backend", "error", "match"),
    [
        pytest.param([[0.1, 0.2]], 0.5, None, TypeError, "noise", id="list-noise"),
        pytest.param(torch.rand(4), 0.5, None, ValueError, "noise", id="rank1"),
        pytest.param(torch.rand(2, 3, 4), 0.5, None, ValueError, "noise", id="rank3"),
        pytest.param(torch.randint(0, 9, (2, 4)), 0.5, None, TypeError, "noise", id="int-noise"),
        pytest.param(torch.rand(2, 4), 1.0, None, ValueError, "mask_ratio", id="ratio1"),
        pytest.param(torch.rand(2, 4), -0.1, None, ValueError, "mask_ratio", id="ratio-neg"),
        pytest.param(torch.rand(2, 4), True, None, ValueError, "mask_ratio", id="ratio-bool"),
        pytest.param(torch.rand(2, 4), float("nan"), None, ValueError, "mask_ratio", id="ratio-nan"),
        pytest.param(torch.rand(2, 4), "0.5", None, ValueError, "mask_ratio", id="ratio-str"),
        pytest.param(torch.rand(2, 4), 0.5, "gpu", ValueError, "backend", id="bad-backend"),
        pytest.param(torch.rand(2, 4), 0.5, "CPU", ValueError, "backend", id="backend-case"),
    ],
)
def test_random_masking_rejects_bad_input(noise, mask_ratio, backend, error, match):
    with pytest.raises(error, match=match):
        ferfast.random_masking(noise, mask_ratio, backend=backend)


def test_random_masking_explicit_unavailable_backend_raises():
    """CPU tensors cannot use the CUDA kernels, GPU or not: an explicit choice raises instead of falling back."""
    with pytest.raises(ValueError, match="backend='cuda'"):
        ferfast.random_masking(torch.rand(2, 8), 0.5, backend="cuda")
