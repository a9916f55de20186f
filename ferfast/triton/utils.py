"""Launch helpers shared by the Triton kernels (Liger-Kernel's ``ops/utils.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

__all__ = [
    "INTERPRETED",
    "MAX_FUSED_SIZE",
    "calculate_settings",
    "cast_rn",
    "cdiv",
    "check",
    "check_dim",
    "check_floating",
    "check_lam",
    "check_long",
    "check_patch_grid",
    "check_perm",
    "check_same_device",
    "define_op",
    "device_guard",
    "div_acc",
    "launch",
    "limit",
    "next_power_of_2",
    "softmax_parts",
    "to_acc",
]

#: Largest block a kernel holds in registers at once (Liger's cap).
MAX_FUSED_SIZE = 65536


def next_power_of_2(n: int) -> int:
    """Smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return triton.next_power_of_2(max(int(n), 1))


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def calculate_settings(n: int, what: str = "the patch dim p*p*C") -> tuple[int, int]:
    """``(BLOCK_SIZE, num_warps)`` for a program that holds ``n`` elements in registers.

    ``BLOCK_SIZE`` is the next power of two (at most :data:`MAX_FUSED_SIZE`); ``num_warps``
    grows with it so that each thread keeps a bounded number of elements. ``what`` names
    ``n`` in the error raised above the limit.
    """
    block = next_power_of_2(n)
    if block > MAX_FUSED_SIZE:
        raise RuntimeError(
            f"cannot hold {n} elements in one Triton program: the limit is {MAX_FUSED_SIZE} "
            f"(next power of two of {what})"
        )
    num_warps = 4
    if block >= 32768:
        num_warps = 32
    elif block >= 8192:
        num_warps = 16
    elif block >= 2048:
        num_warps = 8
    return block, num_warps


# ---- host-side checks (metadata only: no device synchronisation) -------------------------------
#
# The error-type contract (docs/ops.md): the public ops (ferfast.ops) check every argument and raise
# ValueError/TypeError; what reaches a Triton host has passed them, so the hosts only assert the invariants
# their kernels rely on (memory safety for direct ``torch.ops.ferfast_triton`` calls). ``check`` raises
# AssertionError explicitly rather than with an ``assert`` statement, which ``python -O`` would strip.
# Launch limits of valid arguments (a grid or block too large) are not argument errors: ``limit`` raises
# RuntimeError, like ``calculate_settings``.


def check(cond: bool, msg: str) -> None:
    """Assert an invariant of a host's arguments (AssertionError; see the error-type contract above)."""
    if not cond:
        raise AssertionError(msg)


def limit(cond: bool, msg: str) -> None:
    """A launch limit that valid arguments can exceed (RuntimeError, like :func:`calculate_settings`)."""
    if not cond:
        raise RuntimeError(msg)


def check_floating(t: Tensor, name: str) -> None:
    check(t.is_floating_point(), f"{name} must be a floating-point tensor, got {t.dtype}")


def check_long(t: Tensor, name: str) -> None:
    check(t.dtype == torch.long, f"{name} must be an int64 tensor, got {t.dtype}")


def check_dim(t: Tensor, dim: int, name: str) -> None:
    check(t.dim() == dim, f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")


def check_same_device(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    check(a.device == b.device, f"{a_name} ({a.device}) and {b_name} ({b.device}) must be on the same device")


def check_perm(perm: Tensor, batch: int, ref: Tensor, ref_name: str) -> None:
    """``perm`` ``[B]`` int64 on ``ref``'s device: the Mixup partner of each sample (C++ ``check_perm``)."""
    check_long(perm, "perm")
    check(perm.dim() == 1 and perm.shape[0] == batch, f"perm must have shape [{batch}], got {tuple(perm.shape)}")
    check_same_device(perm, "perm", ref, ref_name)


def check_lam(lam: Tensor, batch: int, ref: Tensor, ref_name: str) -> None:
    """``lam`` a floating 0-d or ``[B]`` tensor on ``ref``'s device (C++ ``check_lam``)."""
    check_floating(lam, "lam")
    check(
        lam.dim() == 0 or (lam.dim() == 1 and lam.shape[0] == batch),
        f"lam must be a scalar or have shape [{batch}], got {tuple(lam.shape)}",
    )
    check_same_device(lam, "lam", ref, ref_name)


def check_patch_grid(imgs: Tensor, patch_size: int) -> tuple[int, int]:
    check_dim(imgs, 4, "imgs")
    check_floating(imgs, "imgs")
    check(patch_size > 0, f"patch_size must be positive, got {patch_size}")
    check(
        imgs.shape[2] % patch_size == 0 and imgs.shape[3] % patch_size == 0,
        f"imgs height and width ({imgs.shape[2]}, {imgs.shape[3]}) must be divisible by patch_size {patch_size}",
    )
    return imgs.shape[2] // patch_size, imgs.shape[3] // patch_size


# ---- launches ----------------------------------------------------------------------------------


def device_guard(ref: Tensor | None) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(ref.device)`` for a CUDA tensor (Triton launches on the *current* device and
    stream, so a ``cuda:1`` tensor would otherwise run on ``cuda:0``); a no-op for CPU tensors (interpreter)."""
    if ref is not None and ref.device.type == "cuda":
        return torch.cuda.device(ref.device)
    return contextlib.nullcontext()


def launch(kernel: Any, grid: Any) -> Callable[..., None]:
    """``wrap_triton(kernel)[grid]`` run under :func:`device_guard` of its first tensor argument.

    Every kernel launch of ``ferfast.triton`` goes through here (``tests/ops/test_triton_device_guard.py``
    checks it), so no launch can forget the guard.
    """

    def run(*args: Any, **kwargs: Any) -> None:
        ref = next((a for a in args if isinstance(a, Tensor)), None)
        with device_guard(ref):
            wrap_triton(kernel)[grid](*args, **kwargs)

    return run


# ---- device helpers ----------------------------------------------------------------------------


@triton.jit
def to_acc(x, WIDE: tl.constexpr):
    """Accumulation type: fp64 when the op's inputs are fp64 (so gradcheck is meaningful), else fp32."""
    if WIDE:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def div_acc(a, b, WIDE: tl.constexpr):
    """``a / b`` rounded to nearest in the accumulation type (fp32 uses ``div_rn``: Triton's ``/`` is approximate)."""
    if WIDE:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def softmax_parts(x, valid):
    """``(exp(x - max), its sum, log-sum-exp)`` of a row held in registers (``x`` is ``-inf`` outside ``valid``)."""
    m = tl.max(x, axis=0)
    e = tl.where(valid, tl.exp(x - m), 0.0)
    s = tl.sum(e, axis=0)
    return e, s, m + tl.log(s)


# ---- op definition -----------------------------------------------------------------------------

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover
    InterpretedFunction = ()  # type: ignore[assignment,misc]

#: True when ``TRITON_INTERPRET=1`` was set before triton was imported: ``@triton.jit``
#: then returns interpreted (numpy) kernels that run on CPU tensors.
INTERPRETED: bool = isinstance(to_acc, InterpretedFunction)
_INTERPRETED_CONST = tl.constexpr(INTERPRETED)


@triton.jit
def cast_rn(x, dtype: tl.constexpr):
    """``x.to(dtype)`` rounded to nearest even, also under the interpreter.

    Compiled kernels round float downcasts to nearest even. Triton's interpreter truncates
    fp32 -> bf16 (and mangles fp64 -> bf16), so there the bf16 rounding is done on the bits
    (via fp32, as torch's ``double.bfloat16()``); NaNs stay quiet NaNs.
    """
    y = x.to(dtype)
    if _INTERPRETED_CONST:
        if dtype == tl.bfloat16:
            v = x.to(tl.float32)
            bits = v.to(tl.uint32, bitcast=True)
            rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
            half = tl.where(v != v, (bits >> 16) | 0x40, rounded)
            y = half.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return y


def define_op(name: str) -> Callable[[Callable], Callable]:
    """Define ``name`` from a host function that launches kernels through ``wrap_triton``.

    On a GPU this is :func:`torch.library.triton_op`: ``torch.compile`` sees the kernels, and
    the fake kernel is the host function traced with fake tensors. Under the interpreter,
    ``wrap_triton`` returns the raw interpreted kernel, which can be neither traced nor run
    on fake tensors, so the op is an opaque :func:`torch.library.custom_op` instead, and
    its fake kernel comes from :mod:`ferfast._library` (the C++ ops' ones).

    The schema (and the arguments written in place, ``Tensor(a!)``) come from the op's declaration in
    :mod:`ferfast._registry`, which the C++ ``TORCH_LIBRARY`` block must match (``tests/ops/test_op_specs.py``).
    """
    from ferfast._registry import spec

    declared = spec(name.split("::")[1])
    schema = declared.schema
    mutates = tuple(getattr(declared, "mutates_args", ()))

    def decorate(fn: Callable) -> Callable:
        if INTERPRETED:
            return torch.library.custom_op(name, fn, mutates_args=mutates, schema=schema)
        return triton_op(name, fn, mutates_args=mutates, schema=schema)

    return decorate
