"""Fake (meta) kernels and autograd formulas of the ferfast ops (torchvision's
``_meta_registrations.py`` + ``_autograd_registrations.py``).

The shape functions and backward formulas are plain functions so that every
backend's op (``ferfast::*`` from C++, ``ferfast_triton::*`` from Triton) registers
the same ones with :func:`ferfast._registry.register`, which iterates the op declarations of
:mod:`ferfast._registry` (the one place that says which op has which fake kernel and autograd formula).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ferfast.reference.dtypes import acc_dtype
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
    return grad.new_empty((b, num_prefix_tokens + num_visible, d)), grad.new_empty((d,), dtype=acc_dtype(grad))


def masked_patch_mse_fake(
    imgs: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool, compute_grad: bool
) -> tuple[Tensor, Tensor]:
    grad = pred.new_empty(pred.shape) if compute_grad else pred.new_empty((0,))
    return pred.new_empty((), dtype=acc_dtype(imgs, pred)), grad


def scale_grad_fake(grad: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    return grad.new_empty(grad.shape, dtype=dtype)


def box_iou_fake(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]), dtype=acc_dtype(boxes1))


def paired_box_iou_fake(boxes: Tensor, perm: Tensor) -> Tensor:
    return boxes.new_empty((boxes.shape[0],), dtype=acc_dtype(boxes))


def face_mixup_fake(x: Tensor, lam: Tensor, perm: Tensor, with_originals: bool) -> Tensor:
    return x.new_empty(((2 if with_originals else 1) * x.shape[0], *x.shape[1:]))


def face_mixup_out_fake(x: Tensor, lam: Tensor, perm: Tensor, out: Tensor) -> None:
    return None


def mixup_soft_targets_fake(y: Tensor, num_classes: int, lam: Tensor, perm: Tensor, label_smoothing: float) -> Tensor:
    return y.new_empty((y.shape[0], num_classes), dtype=acc_dtype(lam))


def facemix_loss_fake(
    logits_real: Tensor, logits_mixed: Tensor, y: Tensor, y_soft: Tensor, iou: Tensor, perm: Tensor, compute_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    acc = acc_dtype(logits_real, logits_mixed)
    loss = logits_real.new_empty((), dtype=acc)
    # B * d loss / d logits, contiguous, in the accumulation dtype
    shape = logits_real.shape if compute_grad else (0,)
    return loss, logits_real.new_empty(shape, dtype=acc), logits_real.new_empty(shape, dtype=acc)


def fixmatch_loss_fake(
    logits_weak: Tensor, logits_strong: Tensor, threshold: float, compute_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = acc_dtype(logits_weak, logits_strong)
    b = logits_weak.shape[0]
    grad = logits_strong.new_empty(logits_strong.shape if compute_grad else (0,), dtype=acc)
    return (
        logits_weak.new_empty((), dtype=acc),
        logits_weak.new_empty((), dtype=acc),
        logits_weak.new_empty((b,), dtype=torch.long),
        logits_weak.new_empty((b,), dtype=acc),
        grad,
    )


# ---- autograd ----------------------------------------------------------------------------------


def patchify_gather_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    imgs, ids_keep, patch_size = inputs
    ctx.save_for_backward(ids_keep)
    ctx.patch_size = patch_size
    ctx.imgs_shape = tuple(imgs.shape[1:])
    ctx.imgs_dtype = imgs.dtype


def make_patchify_gather_backward(backward_op: Callable) -> Callable:
    def backward(ctx: Any, grad: Tensor):
        (ids_keep,) = ctx.saved_tensors
        c, h, w = ctx.imgs_shape
        grad_imgs = backward_op(grad.contiguous(), ids_keep, ctx.patch_size, c, h, w)
        return grad_imgs.to(ctx.imgs_dtype), None, None

    return backward


def unshuffle_tokens_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, mask_token, ids_restore, num_prefix_tokens = inputs
    ctx.save_for_backward(ids_restore)
    ctx.num_prefix_tokens = num_prefix_tokens
    ctx.num_visible = x.shape[1] - num_prefix_tokens
    ctx.x_dtype = x.dtype
    ctx.mask_token_shape = tuple(mask_token.shape)
    ctx.mask_token_dtype = mask_token.dtype


def make_unshuffle_tokens_backward(backward_op: Callable) -> Callable:
    def backward(ctx: Any, grad: Tensor):
        (ids_restore,) = ctx.saved_tensors
        grad_x, grad_token = backward_op(grad.contiguous(), ids_restore, ctx.num_prefix_tokens, ctx.num_visible)
        grad_token = grad_token.to(ctx.mask_token_dtype).reshape(ctx.mask_token_shape)
        return grad_x.to(ctx.x_dtype), grad_token, None, None

    return backward


def scale_grad_torch(grad: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``(grad * scale).to(dtype)`` with fp32 math (fp64 when an argument is fp64), in plain torch.

    The backward multiply of the C++ backends and the reference; the Triton backend fuses it into one
    pass (``ferfast_triton::_scale_grad``), where eager torch makes three for fp16/bf16 gradients.
    """
    acc = acc_dtype(grad, scale, dtype)
    out = grad * scale.to(acc) if grad.dtype == acc else grad.to(acc) * scale.to(acc)
    return out.to(dtype)


#: ``(grad, scale, dtype) -> (grad * scale).to(dtype)`` computed in fp32/fp64: :func:`scale_grad_torch` or a
#: backend's fused op.
ScaleFn = Callable[[Tensor, Tensor, torch.dtype], Tensor]


def scale_grad(
    grad: Tensor,
    grad_loss: Tensor,
    factor: float,
    denom: Tensor | None = None,
    dtype: torch.dtype | None = None,
    scale_fn: ScaleFn = scale_grad_torch,
) -> Tensor:
    """``grad * (grad_loss * factor / denom)`` computed in float32 (float64 for float64 ``grad``), rounded once to
    ``dtype`` (default ``grad``'s).

    The fused losses store un-normalised gradients (``mask * (pred - target)`` in ``pred``'s dtype; ``B`` times
    the logits' gradients in float32); their small normalising factors (``2 / (P * denom)`` is ~7e-8 at
    ViT-B/16 batch 256) and a GradScaler's ``grad_loss`` (65536) meet here, in fp32, so fp16 gradients neither
    flush to zero nor overflow. ``grad_loss`` and ``denom`` stay on the device: no host read, whatever their
    values (no ``grad_loss == 1`` shortcut).
    """
    acc = acc_dtype(grad)
    scale = grad_loss.to(acc) * factor
    if denom is not None:
        scale = scale / denom.to(acc)
    return scale_fn(grad, scale, grad.dtype if dtype is None else dtype)


def masked_patch_mse_setup(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    compute_grad = inputs[5]
    if not compute_grad and inputs[1].requires_grad:
        raise RuntimeError("masked_patch_mse was called with compute_grad=False on a pred that requires grad")
    # grad_pred is an output only to carry the gradient computed in forward: never differentiate
    # it, and don't let autograd fill a zero gradient for it (a full extra pass over memory).
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    # The op's grad_pred is mask * (pred - target); d loss / d pred also has the factor 2 / (P * denom).
    denom = inputs[2].sum(dtype=torch.float64)
    ctx.save_for_backward(output[1], torch.where(denom == 0, torch.ones_like(denom), denom))
    ctx.pdim = inputs[1].shape[-1]


def make_masked_patch_mse_backward(scale_fn: ScaleFn) -> Callable:
    def backward(ctx: Any, grad_loss: Tensor, _grad_grad: Tensor):
        """The un-normalised gradient was computed in forward; backward applies ``2 * grad_loss / (P * denom)``."""
        grad_pred, denom = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None, None
        return None, scale_grad(grad_pred, grad_loss, 2.0 / ctx.pdim, denom, scale_fn=scale_fn), None, None, None, None

    return backward


def face_mixup_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, lam, perm, with_originals = inputs
    ctx.save_for_backward(lam, perm)
    ctx.with_originals = with_originals
    ctx.x_dtype = x.dtype


def face_mixup_backward_math(grad: Tensor, lam: Tensor, perm: Tensor, with_originals: bool, x_dtype) -> Tensor:
    """d/dx of ``face_mixup``: ``lam * g`` on each row plus ``(1 - lam) * g`` scattered to the partner rows
    (``index_add_``: any ``perm``, repeated partners included), in float32 (float64 for float64 grads)."""
    b = perm.shape[0]
    g_mix = grad[b:] if with_originals else grad
    acc = acc_dtype(grad)
    lam_c = lam.to(acc).reshape(-1).expand(b).reshape(b, *([1] * (grad.dim() - 1)))
    g_mix = g_mix.to(acc)
    grad_x = g_mix * lam_c
    grad_x.index_add_(0, perm, g_mix * (1 - lam_c))
    if with_originals:
        grad_x = grad_x + grad[:b].to(acc)
    return grad_x.to(x_dtype)


def face_mixup_backward(ctx: Any, grad: Tensor):
    lam, perm = ctx.saved_tensors
    return face_mixup_backward_math(grad, lam, perm, ctx.with_originals, ctx.x_dtype), None, None, None


def facemix_loss_setup(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor, Tensor]) -> None:
    compute_grad = inputs[6]
    if not compute_grad and (inputs[0].requires_grad or inputs[1].requires_grad):
        raise RuntimeError("facemix_loss was called with compute_grad=False on logits that require grad")
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1], output[2])
    ctx.batch = inputs[0].shape[0]
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)


def make_facemix_loss_backward(scale_fn: ScaleFn) -> Callable:
    def backward(ctx: Any, grad_loss: Tensor, _g1: Tensor, _g2: Tensor):
        """The op's gradients are ``B * d loss / d logits`` in float32; backward applies ``grad_loss / B``."""
        grad_real, grad_mixed = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 7
        inv_b = 1.0 / ctx.batch
        real_dtype, mixed_dtype = ctx.dtypes
        return (
            scale_grad(grad_real, grad_loss, inv_b, dtype=real_dtype, scale_fn=scale_fn),
            scale_grad(grad_mixed, grad_loss, inv_b, dtype=mixed_dtype, scale_fn=scale_fn),
            None,
            None,
            None,
            None,
            None,
        )

    return backward


def fixmatch_loss_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    compute_grad = inputs[3]
    if not compute_grad and inputs[1].requires_grad:
        raise RuntimeError("fixmatch_loss was called with compute_grad=False on logits_strong that require grad")
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[4])
    ctx.batch = inputs[0].shape[0]
    ctx.strong_dtype = inputs[1].dtype


def make_fixmatch_loss_backward(scale_fn: ScaleFn) -> Callable:
    def backward(ctx: Any, grad_loss: Tensor, *_unused: Tensor):
        """The op's gradient is ``B * d loss / d logits_strong`` in float32; backward applies ``grad_loss / B``."""
        (grad_strong,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None
        grad = scale_grad(grad_strong, grad_loss, 1.0 / ctx.batch, dtype=ctx.strong_dtype, scale_fn=scale_fn)
        return None, grad, None, None

    return backward


def scale_fn(kernels: dict[str, Callable]) -> ScaleFn:
    """The backward multiply of the losses: the backend's fused ``scale_grad`` kernel, else :func:`scale_grad_torch`."""
    return kernels.get("scale_grad", scale_grad_torch)
