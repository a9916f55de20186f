"""Every registered op is one the tests know (and opcheck) and has the kernels its backend promises."""

import pytest
import torch

from ferfast import _extension
from ferfast._registry import KERNELS, SPECS, spec
from tests.utils import backend_device


#: Derived from the op declarations (``ferfast._registry``): each names the test module that covers its
#: parity, gradients and opcheck (``test_op_specs.py`` checks that module tests it on each backend).
def declared(backend: str) -> set[str]:
    return {s.name for s in (*SPECS, *KERNELS) if backend in s.backends}


TESTED_OPS = declared("cpu")
#: Ops only the Triton backend has: its fused backward multiply of the losses (the C++ backends use torch ops).
TRITON_ONLY_OPS = declared("triton") - TESTED_OPS
DIFFERENTIABLE = {s.name for s in SPECS if s.differentiable}


def registered(namespace: str) -> set[str]:
    prefix = namespace + "::"
    return {name[len(prefix) :] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)}


def has_kernel(namespace: str, op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{op}", key)


@pytest.mark.ext
def test_native_ops_are_all_tested_and_have_cpu_fake_and_autograd_kernels():
    backend_device("cpu")
    assert registered("ferfast") - {"_cuda_version"} == TESTED_OPS
    for op in TESTED_OPS:
        assert has_kernel("ferfast", op, "CPU"), op
        assert has_kernel("ferfast", op, "Meta"), op  # register_fake
    for op in DIFFERENTIABLE:
        assert has_kernel("ferfast", op, "Autograd"), op


@pytest.mark.ext
def test_native_cuda_build_registers_every_cuda_kernel():
    """A library built with CUDA (checkable without a GPU) has a CUDA kernel for every op."""
    backend_device("cpu")
    version = torch.ops.ferfast._cuda_version()
    assert _extension.HAS_CUDA_OPS == (version > 0)
    if not _extension.HAS_CUDA_OPS:
        pytest.skip("the native library was built without CUDA")
    assert version >= 11000
    missing = sorted(op for op in TESTED_OPS if not has_kernel("ferfast", op, "CUDA"))
    assert not missing, f"CUDA kernels missing for {missing}"


@pytest.mark.triton
def test_triton_ops_are_all_tested_and_differentiable():
    backend_device("triton")
    assert registered("ferfast_triton") == TESTED_OPS | TRITON_ONLY_OPS
    for op in DIFFERENTIABLE:
        assert has_kernel("ferfast_triton", op, "Autograd"), op


def schema_of(namespace: str, op: str) -> str:
    """The registered schema without its name: ``(Tensor x, ...) -> ...``."""
    text = str(getattr(getattr(torch.ops, namespace), op).default._schema)
    return text[text.index("(") :]


@pytest.mark.ext
def test_native_schemas_are_the_declared_ones():
    """``csrc/ferfast.cpp`` repeats each declared schema (C++ cannot read Python); they must agree."""
    backend_device("cpu")
    for op in TESTED_OPS:
        assert schema_of("ferfast", op) == spec(op).schema, op


@pytest.mark.triton
def test_triton_schemas_are_the_declared_ones():
    backend_device("triton")
    for op in TESTED_OPS | TRITON_ONLY_OPS:
        assert schema_of("ferfast_triton", op) == spec(op).schema, op
