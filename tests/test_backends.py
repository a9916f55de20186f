"""Backend registry and selection (``ferfast.backends``): explicit choices raise, the global choice falls back."""

import importlib
import warnings
from dataclasses import replace

import pytest
import torch

import ferfast
from ferfast import _extension, backends
from ferfast.reference import random_masking_ref

CPU = torch.device("cpu")


@pytest.fixture
def global_backend():
    """Restores the global choice (and the once-per-process fallback warning) after the test."""
    saved = backends.default_backend()
    backends._warn_fallback.cache_clear()
    yield
    backends.set_default_backend(saved)
    backends._warn_fallback.cache_clear()


@pytest.fixture
def triton_cache():
    """``triton_available`` is cached per process: clear it around tests that change TRITON_INTERPRET."""
    backends.triton_available.cache_clear()
    yield
    backends.triton_available.cache_clear()


def test_backend_names():
    assert backends.BACKENDS == ("auto", "reference", "cpu", "cuda", "triton")


def test_available_backends_on_cpu():
    found = backends.available_backends("cpu")
    assert found[-1] == "reference"
    assert ("cpu" in found) == _extension.HAS_OPS
    assert "cuda" not in found
    assert backends.available_backends(CPU) == found


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_no_gpu_means_triton_runs_only_under_the_interpreter(triton_cache, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not backends.triton_available("cuda")
    assert not backends.triton_available("cpu")
    backends.triton_available.cache_clear()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.triton_available("cpu") == (importlib.util.find_spec("triton") is not None)
    assert not backends.triton_available("meta")


def test_auto_picks_the_fastest_available():
    expected = "cpu" if _extension.HAS_OPS else "reference"
    assert backends.resolve_backend(CPU, "auto") == expected
    assert backends.resolve_backend(torch.device("meta"), "auto") == "reference"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_explicit_available_backend_is_used(backend):
    if backend == "cpu" and not _extension.HAS_OPS:
        pytest.skip("native library not loaded")
    assert backends.resolve_backend(CPU, backend) == backend


def test_explicit_unavailable_backend_raises():
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run on cpu tensors.*available: \["):
        backends.resolve_backend(CPU, "cuda")
    with pytest.raises(ValueError, match="backend='cuda'"):
        ferfast.patchify_gather(torch.randn(1, 3, 8, 8), torch.zeros(1, 2, dtype=torch.long), 4, backend="cuda")


def test_explicit_triton_on_cpu_without_the_interpreter_raises(triton_cache, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' cannot run on cpu tensors"):
        ferfast.random_masking(torch.rand(2, 8), 0.5, backend="triton")


def test_explicit_cpu_without_the_native_library_raises(monkeypatch):
    monkeypatch.setattr(_extension, "HAS_OPS", False)
    monkeypatch.setattr(_extension, "LOAD_ERROR", "ferfast._C is not built")
    assert backends.available_backends("cpu") == ["reference"]
    with pytest.raises(ValueError, match=r"native library: ferfast\._C is not built"):
        ferfast.random_masking(torch.rand(2, 8), 0.5, backend="cpu")
    # and auto quietly uses the reference
    ids_keep, _, _ = ferfast.random_masking(torch.rand(2, 8), 0.5)
    assert ids_keep.shape == (2, 4)


@pytest.mark.parametrize("name", ["gpu", "CPU", "", "Triton", None, 1])
def test_bad_backend_names_raise(name, global_backend):
    if name is not None:
        with pytest.raises(ValueError, match="backend must be one of"):
            backends.resolve_backend(CPU, name)
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.set_default_backend(name)


def test_global_choice_is_used(global_backend, monkeypatch):
    """set_default_backend("reference") sends calls without backend= to the reference implementation."""
    registry = importlib.import_module("ferfast._registry")
    calls = []

    def spy(noise, mask_ratio):
        calls.append(mask_ratio)
        return random_masking_ref(noise, mask_ratio)

    monkeypatch.setitem(registry.OPS, "random_masking", replace(registry.OPS["random_masking"], reference=spy))
    backends.set_default_backend("reference")
    assert backends.default_backend() == "reference"
    assert backends.resolve_backend(CPU) == "reference"
    ferfast.random_masking(torch.rand(2, 8), 0.25)
    assert calls == [0.25]
    ferfast.random_masking(torch.rand(2, 8), 0.5, backend="auto")  # a per-call choice wins
    assert calls == ([0.25] if _extension.HAS_OPS else [0.25, 0.5])


def test_global_choice_that_cannot_run_falls_back_with_a_warning(global_backend):
    """FERFAST_BACKEND=cuda on CPU tensors: warn once, then use auto (an explicit backend= would raise)."""
    backends.set_default_backend("cuda")
    noise = torch.rand(3, 20)
    with pytest.warns(RuntimeWarning, match=r"FERFAST_BACKEND=cuda cannot run on cpu tensors here; using '"):
        ids_keep, mask, ids_restore = ferfast.random_masking(noise, 0.75)
    for got, expected in zip((ids_keep, mask, ids_restore), random_masking_ref(noise, 0.75)):
        assert torch.equal(got, expected)
    with warnings.catch_warnings():  # once per process and device, not on every call
        warnings.simplefilter("error")
        assert backends.resolve_backend(CPU) == backends.resolve_backend(CPU, "auto")


def test_global_choice_module_state_via_monkeypatch(global_backend, monkeypatch):
    monkeypatch.setattr(backends, "_GLOBAL_BACKEND", "triton")
    if backends.triton_available("cpu"):
        assert backends.resolve_backend(CPU) == "triton"
    else:
        with pytest.warns(RuntimeWarning, match="FERFAST_BACKEND=triton"):
            assert backends.resolve_backend(CPU) == backends.resolve_backend(CPU, "auto")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "auto"), ("", "auto"), ("  Triton ", "triton"), ("REFERENCE", "reference")]
)
def test_env_variable_parsing(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("FERFAST_BACKEND", raising=False)
    else:
        monkeypatch.setenv("FERFAST_BACKEND", value)
    assert backends._env_backend() == expected


def test_env_variable_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("FERFAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FERFAST_BACKEND must be one of"):
        backends._env_backend()


def test_public_reexports():
    assert ferfast.set_default_backend is backends.set_default_backend
    assert ferfast.default_backend is backends.default_backend
    assert ferfast.available_backends is backends.available_backends
    assert ferfast.resolve_backend is backends.resolve_backend
