"""Every registered op is one the tests know (and opcheck) and has the kernels its backend promises."""

import pytest
import torch

from ferfast import _extension
from tests.utils import backend_device

#: The ops whose parity, gradients and opcheck the per-op test files cover. A new op must get tests there.
TESTED_OPS = {
    "random_masking",  # test_random_masking.py
    "patchify_gather",  # test_patchify_gather.py
    "_patchify_gather_backward",
    "unshuffle_tokens",  # test_unshuffle_tokens.py
    "_unshuffle_tokens_backward",
    "masked_patch_mse",  # test_masked_patch_mse.py
    "box_iou",  # test_box_iou.py
    "paired_box_iou",
    "face_mixup",  # test_face_mixup.py
    "face_mixup_out",
    "mixup_soft_targets",  # test_mixup_soft_targets.py
    "facemix_loss",  # test_facemix_loss.py
    "fixmatch_loss",  # test_fixmatch_loss.py
}
#: Ops only the Triton backend has: its fused backward multiply of the losses (the C++ backends use torch ops).
TRITON_ONLY_OPS = {"_scale_grad"}  # test_loss_scaling.py
DIFFERENTIABLE = {
    "patchify_gather",
    "unshuffle_tokens",
    "masked_patch_mse",
    "face_mixup",
    "facemix_loss",
    "fixmatch_loss",
}


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
