"""Triton kernels for MAE's masking and token shuffling (``ferfast_triton::*``).

- ``random_masking``: one program per (row, block of patches). Each patch's rank in the
  stable ascending order of the noise is counted directly,
  ``rank_i = #{j : key_j < key_i or (key_j == key_i and j < i)}``, on ``[BLOCK_I, BLOCK_J]``
  tiles, where ``key`` is the float's order-preserving integer built from its bits
  (``-0.0`` == ``+0.0``, subnormals kept), as in the C++ kernels. Ranks are unique, so the
  result is ``torch.argsort(noise, stable=True)`` bit for bit (NaNs: positive ones sort
  last as in torch, negative ones first, as in the C++ kernels). Then
  ``ids_restore = rank``, ``mask = rank >= K`` and ``ids_keep[rank] = i``.
- ``patchify_gather``: one program per (kept patch, chunk of the patch dim), copying NCHW
  pixels straight into ``nhwpqc`` order. Its backward runs one program per image patch
  and *gathers*: it finds the ``k`` with ``ids_keep[b, k] == l`` and sums their
  gradients in ascending ``k`` (fp32), so every pixel is written once, repeated ids add up,
  and the result is deterministic (no atomics).
- ``unshuffle_tokens``: one program per (output token, chunk of D). Its backward gathers
  the same way (``grad_x`` row ``j`` sums the output rows ``l`` with ``ids_restore[b, l] == j``);
  the mask-token gradient is reduced per image by a second kernel, then over the batch by
  a torch ``sum`` (deterministic).

Index arguments are not range-checked on the host (that would synchronise a GPU): an
out-of-range ``ids_keep`` reads zeros and its gradient goes nowhere; an out-of-range
``ids_restore`` entry yields a zero token. Kernels compiled with ``TRITON_DEBUG=1`` check
the ranges with device assertions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ferfast.reference.dtypes import acc_dtype
from ferfast.reference.masking import num_kept
from ferfast.triton.utils import (
    calculate_settings,
    cdiv,
    check,
    check_dim,
    check_floating,
    check_long,
    check_patch_grid,
    check_same_device,
    define_op,
    launch,
    limit,
    next_power_of_2,
    to_acc,
)

__all__ = [
    "patchify_gather",
    "patchify_gather_backward",
    "random_masking",
    "unshuffle_tokens",
    "unshuffle_tokens_backward",
]


# ---- random_masking ----------------------------------------------------------------------------


@triton.jit
def _order_key(v, BITS: tl.constexpr):
    """Signed integer whose order is the float order of ``v`` (``-0.0`` == ``+0.0``).

    Computed on the raw bits of the ``BITS``-wide float, with integer operations only (no
    float conversion or comparison, so subnormals are never flushed): non-negative floats
    keep their bits, negative ones flip the magnitude bits (larger magnitudes sort lower).
    That maps ``-0.0`` to ``-1``, which no other value reaches, and it becomes ``0``. Same
    order as the C++ ``float_order_key``/``double_order_key``.
    """
    if BITS == 64:
        k = v.to(tl.int64, bitcast=True)
        key = tl.where(k < 0, k ^ 0x7FFFFFFFFFFFFFFF, k)
    elif BITS == 32:
        k = v.to(tl.int32, bitcast=True)
        key = tl.where(k < 0, k ^ 0x7FFFFFFF, k)
    else:  # bf16 / fp16: sign-extended 16-bit pattern
        k = v.to(tl.int16, bitcast=True).to(tl.int32)
        key = tl.where(k < 0, k ^ 0x7FFF, k)
    return tl.where(key == -1, 0, key)


@triton.jit
def _random_masking_kernel(
    noise_ptr, keep_ptr, mask_ptr, restore_ptr, L, K, BITS: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    valid_i = offs_i < L
    noise_row = noise_ptr + row * L
    key_i = _order_key(tl.load(noise_row + offs_i, mask=valid_i, other=0), BITS)
    rank = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        valid_j = offs_j < L
        key_j = _order_key(tl.load(noise_row + offs_j, mask=valid_j, other=0), BITS)
        kj = key_j[None, :]
        ki = key_i[:, None]
        before = (kj < ki) | ((kj == ki) & (offs_j[None, :] < offs_i[:, None]))
        before = before & valid_j[None, :]
        rank += tl.sum(before.to(tl.int32), axis=1)
    rank64 = rank.to(tl.int64)
    removed = rank64 >= K
    tl.store(restore_ptr + row * L + offs_i, rank64, mask=valid_i)
    ones = tl.where(removed, 1.0, 0.0)  # via fp32: the interpreter mis-converts int1 -> bf16
    tl.store(mask_ptr + row * L + offs_i, ones.to(mask_ptr.dtype.element_ty), mask=valid_i)
    tl.store(keep_ptr + row * K + rank64, offs_i, mask=valid_i & (rank64 < K))


@define_op("ferfast_triton::random_masking")
def random_masking(noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    check_dim(noise, 2, "noise")
    check_floating(noise, "noise")
    check(0.0 <= mask_ratio < 1.0, f"mask_ratio must be in [0, 1), got {mask_ratio}")
    b, length = noise.shape
    limit(length < 2**31, f"noise has too many patches per row: {length}")
    k = num_kept(length, mask_ratio)
    noise = noise.contiguous()
    ids_keep = noise.new_empty((b, k), dtype=torch.long)
    mask = noise.new_empty((b, length))
    ids_restore = noise.new_empty((b, length), dtype=torch.long)
    if b > 0 and length > 0:
        block_i = min(next_power_of_2(length), 64)
        block_j = min(next_power_of_2(length), 64)
        grid = (b, cdiv(length, block_i))
        launch(_random_masking_kernel, grid)(
            noise,
            ids_keep,
            mask,
            ids_restore,
            length,
            k,
            BITS=noise.element_size() * 8,
            BLOCK_I=block_i,
            BLOCK_J=block_j,
            num_warps=4,
        )
    return ids_keep, mask, ids_restore


# ---- patchify_gather ---------------------------------------------------------------------------


@triton.jit
def _patchify_gather_kernel(imgs_ptr, ids_ptr, out_ptr, K, C, H, W, p, gw, L, P, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)  # b * K + k
    b = r // K
    l = tl.load(ids_ptr + r)
    tl.device_assert((l >= 0) & (l < L), "patchify_gather: ids_keep out of range")
    ok = (l >= 0) & (l < L)
    y0 = (l // gw) * p
    x0 = (l % gw) * p
    e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_patch = e < P
    # nhwpqc: e = (i * p + j) * C + c
    c = e % C
    j = (e // C) % p
    i = e // (C * p)
    src = ((b * C + c) * H + y0 + i) * W + x0 + j
    v = tl.load(imgs_ptr + src, mask=in_patch & ok, other=0)
    tl.store(out_ptr + r * P + e, v, mask=in_patch)


@triton.jit
def _patchify_gather_backward_kernel(
    grad_ptr, ids_ptr, out_ptr, K, C, H, W, p, gw, L, P, WIDE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr
):
    r = tl.program_id(0).to(tl.int64)  # b * L + l: one image patch
    b = r // L
    l = r % L
    e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_patch = e < P
    acc = to_acc(tl.zeros([BLOCK], dtype=tl.float32), WIDE)
    ids_row = ids_ptr + b * K
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        ids = tl.load(ids_row + ks, mask=ks < K, other=-1)
        match = ids == l
        n = tl.sum(match.to(tl.int32), axis=0)
        prev = tl.full((), -1, tl.int64) + k0
        for _ in range(n):  # kept copies of this patch, in ascending k
            k = tl.min(tl.where(match & (ks > prev), ks, K), axis=0).to(tl.int64)
            g = tl.load(grad_ptr + (b * K + k) * P + e, mask=in_patch, other=0)
            acc += to_acc(g, WIDE)
            prev = k
    y0 = (l // gw) * p
    x0 = (l % gw) * p
    c = e % C
    j = (e // C) % p
    i = e // (C * p)
    dst = ((b * C + c) * H + y0 + i) * W + x0 + j
    tl.store(out_ptr + dst, acc.to(out_ptr.dtype.element_ty), mask=in_patch)


@define_op("ferfast_triton::patchify_gather")
def patchify_gather(imgs: Tensor, ids_keep: Tensor, patch_size: int) -> Tensor:
    gh, gw = check_patch_grid(imgs, patch_size)
    check_dim(ids_keep, 2, "ids_keep")
    check_long(ids_keep, "ids_keep")
    check_same_device(imgs, "imgs", ids_keep, "ids_keep")
    check(
        ids_keep.shape[0] == imgs.shape[0],
        f"ids_keep batch size {ids_keep.shape[0]} does not match imgs batch size {imgs.shape[0]}",
    )
    imgs = imgs.contiguous()
    ids_keep = ids_keep.contiguous()
    b, c, h, w = imgs.shape
    k = ids_keep.shape[1]
    p = patch_size
    pdim = p * p * c
    out = imgs.new_empty((b, k, pdim))
    if out.numel() > 0:
        block, num_warps = calculate_settings(min(pdim, 4096))
        grid = (b * k, cdiv(pdim, block))
        launch(_patchify_gather_kernel, grid)(
            imgs, ids_keep, out, k, c, h, w, p, gw, gh * gw, pdim, BLOCK=block, num_warps=num_warps
        )
    return out


@define_op("ferfast_triton::_patchify_gather_backward")
def patchify_gather_backward(
    grad: Tensor, ids_keep: Tensor, patch_size: int, channels: int, height: int, width: int
) -> Tensor:
    check_dim(grad, 3, "grad")
    check_floating(grad, "grad")
    check_dim(ids_keep, 2, "ids_keep")
    check_long(ids_keep, "ids_keep")
    check_same_device(grad, "grad", ids_keep, "ids_keep")
    p = patch_size
    check(p > 0 and height % p == 0 and width % p == 0, "height and width must be divisible by patch_size")
    pdim = p * p * channels
    check(
        grad.shape[0] == ids_keep.shape[0] and grad.shape[1] == ids_keep.shape[1] and grad.shape[2] == pdim,
        f"grad shape {tuple(grad.shape)} does not match ids_keep {tuple(ids_keep.shape)} and patch dim {pdim}",
    )
    grad = grad.contiguous()
    ids_keep = ids_keep.contiguous()
    b, k = ids_keep.shape
    gw = width // p
    length = (height // p) * gw
    out = grad.new_empty((b, channels, height, width))
    if out.numel() > 0:
        block, num_warps = calculate_settings(min(pdim, 2048))
        grid = (b * length, cdiv(pdim, block))
        launch(_patchify_gather_backward_kernel, grid)(
            grad,
            ids_keep,
            out,
            k,
            channels,
            height,
            width,
            p,
            gw,
            length,
            pdim,
            WIDE=grad.dtype == torch.float64,
            BLOCK=block,
            BLOCK_K=min(next_power_of_2(k), 1024),
            num_warps=num_warps,
        )
    return out


# ---- unshuffle_tokens --------------------------------------------------------------------------


@triton.jit
def _unshuffle_tokens_kernel(x_ptr, token_ptr, ids_ptr, out_ptr, N, L, D, NP, BLOCK_D: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)  # b * (NP + L) + t
    rows = NP + L
    b = r // rows
    t = r % rows
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_row = d < D
    is_patch = t >= NP
    j = tl.load(ids_ptr + b * L + (t - NP), mask=is_patch, other=0)
    tl.device_assert((t < NP) | ((j >= 0) & (j < L)), "unshuffle_tokens: ids_restore out of range")
    K = N - NP
    from_x = (t < NP) | ((j >= 0) & (j < K))
    from_token = is_patch & (j >= K) & (j < L)
    src = tl.where(is_patch, NP + j, t)
    v = tl.load(x_ptr + (b * N + src) * D + d, mask=in_row & from_x, other=0)
    tok = tl.load(token_ptr + d, mask=in_row & from_token, other=0)  # already in x's dtype
    tl.store(out_ptr + r * D + d, tl.where(from_x, v, tok), mask=in_row)


@triton.jit
def _unshuffle_tokens_backward_kernel(
    grad_ptr, ids_ptr, grad_x_ptr, L, D, NP, K, WIDE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr
):
    r = tl.program_id(0).to(tl.int64)  # b * (NP + K) + t: one row of grad_x
    N = NP + K
    b = r // N
    t = r % N
    rows = NP + L
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_row = d < D
    grad_img = grad_ptr + b * rows * D
    # prefix tokens pass straight through
    acc = to_acc(tl.load(grad_img + t * D + d, mask=in_row & (t < NP), other=0), WIDE)
    # visible token j collects the output rows l with ids_restore[b, l] == j, in ascending l
    j = t - NP
    ids_row = ids_ptr + b * L
    for l0 in range(0, L, BLOCK_L):
        ls = l0 + tl.arange(0, BLOCK_L)
        ids = tl.load(ids_row + ls, mask=ls < L, other=-1)
        match = (ids == j) & (j >= 0)
        n = tl.sum(match.to(tl.int32), axis=0)
        prev = tl.full((), -1, tl.int64) + l0
        for _ in range(n):
            l = tl.min(tl.where(match & (ls > prev), ls, L), axis=0).to(tl.int64)
            g = tl.load(grad_img + (NP + l) * D + d, mask=in_row, other=0)
            acc += to_acc(g, WIDE)
            prev = l
    tl.store(grad_x_ptr + r * D + d, acc.to(grad_x_ptr.dtype.element_ty), mask=in_row)


@triton.jit
def _unshuffle_token_grad_kernel(
    grad_ptr, ids_ptr, partial_ptr, L, D, NP, K, WIDE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)  # one image: partial[b, :] = sum of its mask-token rows
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_row = d < D
    rows = NP + L
    grad_img = grad_ptr + (b * rows + NP) * D
    acc = to_acc(tl.zeros([BLOCK_D], dtype=tl.float32), WIDE)
    for l0 in range(0, L, BLOCK_L):
        ls = l0 + tl.arange(0, BLOCK_L)
        ids = tl.load(ids_ptr + b * L + ls, mask=ls < L, other=0)
        is_token = (ls < L) & (ids >= K) & (ids < L)
        g = tl.load(
            grad_img + ls[:, None].to(tl.int64) * D + d[None, :], mask=is_token[:, None] & in_row[None, :], other=0
        )
        acc += tl.sum(to_acc(g, WIDE), axis=0)
    tl.store(partial_ptr + b * D + d, acc, mask=in_row)


@define_op("ferfast_triton::unshuffle_tokens")
def unshuffle_tokens(x: Tensor, mask_token: Tensor, ids_restore: Tensor, num_prefix_tokens: int) -> Tensor:
    check_dim(x, 3, "x")
    check_floating(x, "x")
    check_floating(mask_token, "mask_token")
    check_dim(ids_restore, 2, "ids_restore")
    check_long(ids_restore, "ids_restore")
    check_same_device(x, "x", ids_restore, "ids_restore")
    check_same_device(x, "x", mask_token, "mask_token")
    b, n, dim = x.shape
    check(mask_token.numel() == dim, f"mask_token must have D={dim} elements, got shape {tuple(mask_token.shape)}")
    check(ids_restore.shape[0] == b, f"ids_restore batch size {ids_restore.shape[0]} does not match x batch size {b}")
    check(0 <= num_prefix_tokens <= n, f"num_prefix_tokens must be in [0, x.size(1)], got {num_prefix_tokens}")
    length = ids_restore.shape[1]
    check(
        n - num_prefix_tokens <= length,
        f"x has {n - num_prefix_tokens} visible tokens, more than ids_restore's {length} patches",
    )
    x = x.contiguous()
    token = mask_token.reshape(-1).to(x.dtype).contiguous()  # rounded by torch, as the C++ kernel does
    ids_restore = ids_restore.contiguous()
    rows = num_prefix_tokens + length
    out = x.new_empty((b, rows, dim))
    if out.numel() > 0:
        block_d, num_warps = calculate_settings(min(dim, 1024))
        grid = (b * rows, cdiv(dim, block_d))
        launch(_unshuffle_tokens_kernel, grid)(
            x, token, ids_restore, out, n, length, dim, num_prefix_tokens, BLOCK_D=block_d, num_warps=num_warps
        )
    return out


@define_op("ferfast_triton::_unshuffle_tokens_backward")
def unshuffle_tokens_backward(
    grad: Tensor, ids_restore: Tensor, num_prefix_tokens: int, num_visible: int
) -> tuple[Tensor, Tensor]:
    check_dim(grad, 3, "grad")
    check_floating(grad, "grad")
    check_dim(ids_restore, 2, "ids_restore")
    check_long(ids_restore, "ids_restore")
    check_same_device(grad, "grad", ids_restore, "ids_restore")
    b, length = ids_restore.shape
    check(
        grad.shape[0] == b and grad.shape[1] == num_prefix_tokens + length,
        f"grad shape {tuple(grad.shape)} does not match ids_restore {tuple(ids_restore.shape)} "
        f"with num_prefix_tokens={num_prefix_tokens}",
    )
    check(0 <= num_visible <= length, f"num_visible must be in [0, L], got {num_visible}")
    check(num_prefix_tokens >= 0, "num_prefix_tokens must be >= 0")
    grad = grad.contiguous()
    ids_restore = ids_restore.contiguous()
    dim = grad.shape[2]
    acc = acc_dtype(grad)
    wide = acc == torch.float64
    n = num_prefix_tokens + num_visible
    grad_x = grad.new_empty((b, n, dim))
    partial = grad.new_empty((b, dim), dtype=acc)
    if grad_x.numel() > 0:
        block_d, num_warps = calculate_settings(min(dim, 1024))
        grid = (b * n, cdiv(dim, block_d))
        launch(_unshuffle_tokens_backward_kernel, grid)(
            grad,
            ids_restore,
            grad_x,
            length,
            dim,
            num_prefix_tokens,
            num_visible,
            WIDE=wide,
            BLOCK_D=block_d,
            BLOCK_L=min(next_power_of_2(length), 1024),
            num_warps=num_warps,
        )
    if partial.numel() > 0:
        block_d = min(next_power_of_2(dim), 128)
        grid = (b, cdiv(dim, block_d))
        launch(_unshuffle_token_grad_kernel, grid)(
            grad,
            ids_restore,
            partial,
            length,
            dim,
            num_prefix_tokens,
            num_visible,
            WIDE=wide,
            BLOCK_D=block_d,
            BLOCK_L=min(next_power_of_2(length), 32),
            num_warps=4,
        )
    grad_token = partial.sum(dim=0)
    return grad_x, grad_token
