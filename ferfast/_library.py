"""Fake (meta) kernels and autograd formulas of the ferfast ops (torchvision's
``_meta_registrations.py`` + ``_autograd_registrations.py``).

The shape functions and backward formulas are plain functions so that every
backend's op (``ferfast::*`` from C++, ``ferfast_triton::*`` from Triton) registers
the same ones with :func:`register_op`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from ferfast.reference.masking import num_kept

# ---- fake kernels ------------------------------------------------------------------------------


def random_masking_fake(noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    b, length = noise.shape
    k = num_kept(length, mask_ratio)
    return (
        noise.new_empty((b, k), dtype=torch.long),
        noise.new_empty((b, length)),
        noise.new_empty((b, length), dtype=torch.long),
    )


def patchify_gather_fake(imgs: Tensor, ids_keep: Tensor, patch_size: int) -> Tensor:
    b, c = imgs.shape[:2]
    return imgs.new_empty((b, ids_keep.shape[1], patch_size * patch_size * c))


def patchify_gather_backward_fake(
    grad: Tensor, ids_keep: Tensor, patch_size: int, channels: int, height: int, width: int
) -> Tensor:
    return grad.new_empty((grad.shape[0], channels, height, width))


def unshuffle_tokens_fake(x: Tensor, mask_token: Tensor, ids_restore: Tensor, num_prefix_tokens: int) -> Tensor:
    return x.new_empty((x.shape[0], num_prefix_tokens + ids_restore.shape[1], x.shape[2]))


def unshuffle_tokens_backward_fake(
    grad: Tensor, ids_restore: Tensor, num_prefix_tokens: int, num_visible: int
) -> tuple[Tensor, Tensor]:
    b, _, d = grad.shape
    token_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return grad.new_empty((b, num_prefix_tokens + num_visible, d)), grad.new_empty((d,), dtype=token_dtype)


def masked_patch_mse_fake(
    imgs: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool, compute_grad: bool
) -> tuple[Tensor, Tensor]:
    grad = torch.empty_like(pred) if compute_grad else pred.new_empty((0,))
    wide = torch.float64 in (imgs.dtype, pred.dtype)
    return pred.new_empty((), dtype=torch.float64 if wide else torch.float32), grad


# ---- autograd ----------------------------------------------------------------------------------


def _patchify_gather_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    imgs, ids_keep, patch_size = inputs
    ctx.save_for_backward(ids_keep)
    ctx.patch_size = patch_size
    ctx.imgs_shape = tuple(imgs.shape[1:])
    ctx.imgs_dtype = imgs.dtype


def _make_patchify_gather_backward(backward_op: Callable) -> Callable:
    def backward(ctx: Any, grad: Tensor):
        (ids_keep,) = ctx.saved_tensors
        c, h, w = ctx.imgs_shape
        grad_imgs = backward_op(grad.contiguous(), ids_keep, ctx.patch_size, c, h, w)
        return grad_imgs.to(ctx.imgs_dtype), None, None

    return backward


def _unshuffle_tokens_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, mask_token, ids_restore, num_prefix_tokens = inputs
    ctx.save_for_backward(ids_restore)
    ctx.num_prefix_tokens = num_prefix_tokens
    ctx.num_visible = x.shape[1] - num_prefix_tokens
    ctx.x_dtype = x.dtype
    ctx.mask_token_shape = tuple(mask_token.shape)
    ctx.mask_token_dtype = mask_token.dtype


def _make_unshuffle_tokens_backward(backward_op: Callable) -> Callable:
    def backward(ctx: Any, grad: Tensor):
        (ids_restore,) = ctx.saved_tensors
        grad_x, grad_token = backward_op(grad.contiguous(), ids_restore, ctx.num_prefix_tokens, ctx.num_visible)
        grad_token = grad_token.to(ctx.mask_token_dtype).reshape(ctx.mask_token_shape)
        return grad_x.to(ctx.x_dtype), grad_token, None, None

    return backward


def _masked_patch_mse_setup(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    compute_grad = inputs[5]
    if not compute_grad and inputs[1].requires_grad:
        raise RuntimeError("masked_patch_mse was called with compute_grad=False on a pred that requires grad")
    # grad_pred is an output only to carry the gradient computed in forward: never differentiate
    # it, and don't let autograd fill a zero gradient for it (a full extra pass over memory).
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1])


def _masked_patch_mse_backward(ctx: Any, grad_loss: Tensor, _grad_grad: Tensor):
    """The gradient was computed in forward; backward only scales it (Liger's fused-CE idea)."""
    (grad_pred,) = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None, None
    tracing = torch.compiler.is_compiling() or is_fake(grad_loss)  # aot_function/make_fx trace with fakes
    if not tracing and float(grad_loss) == 1.0:
        scaled = grad_pred  # the common loss.backward(): skip a full pass over grad_pred
    else:
        scaled = grad_pred * grad_loss.to(grad_pred.dtype)
    return None, scaled, None, None, None, None


def register_op(namespace: str, backward_ops: dict[str, Callable], with_fake: bool = True) -> None:
    """Register fake kernels (optional) and autograd formulas on ``namespace::<op>``."""
    lib = f"{namespace}::"
    if with_fake:
        torch.library.register_fake(lib + "random_masking")(random_masking_fake)
        torch.library.register_fake(lib + "patchify_gather")(patchify_gather_fake)
        torch.library.register_fake(lib + "_patchify_gather_backward")(patchify_gather_backward_fake)
        torch.library.register_fake(lib + "unshuffle_tokens")(unshuffle_tokens_fake)
        torch.library.register_fake(lib + "_unshuffle_tokens_backward")(unshuffle_tokens_backward_fake)
        torch.library.register_fake(lib + "masked_patch_mse")(masked_patch_mse_fake)
    torch.library.register_autograd(
        lib + "patchify_gather",
        _make_patchify_gather_backward(backward_ops["patchify_gather"]),
        setup_context=_patchify_gather_setup,
    )
    torch.library.register_autograd(
        lib + "unshuffle_tokens",
        _make_unshuffle_tokens_backward(backward_ops["unshuffle_tokens"]),
        setup_context=_unshuffle_tokens_setup,
    )
    torch.library.register_autograd(
        lib + "masked_patch_mse", _masked_patch_mse_backward, setup_context=_masked_patch_mse_setup
    )


def register_native_ops() -> None:
    """Register the C++ library's ops (``ferfast::*``); called once ``_C`` is loaded."""
    ops = torch.ops.ferfast
    register_op(
        "ferfast",
        {
            "patchify_gather": ops._patchify_gather_backward.default,
            "unshuffle_tokens": ops._unshuffle_tokens_backward.default,
        },
    )
