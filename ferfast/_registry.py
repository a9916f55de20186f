"""Every ferfast op, declared once.

One :class:`OpSpec` per op holds everything the rest of the package derives from it:

* ``schema``: the op's signature; the Triton backend defines ``ferfast_triton::<name>`` with it
  (:func:`ferfast.triton.utils.define_op`), and ``tests/ops/test_op_specs.py`` checks that the C++
  ``TORCH_LIBRARY(ferfast)`` block (``csrc/ferfast.cpp``) declares the same one;
* ``reference``: plain PyTorch with the op's schema (an adapter over :mod:`ferfast.reference`), what
  :func:`dispatch` returns for the ``reference`` backend;
* ``fake``: the shape function registered with ``torch.library.register_fake`` (:mod:`ferfast._library`);
* ``setup_context``/``backward``: the autograd formula registered with ``torch.library.register_autograd``
  (``None`` for ops without a gradient); ``backward`` is a factory taking the backend's :data:`Kernels`;
* ``backends``: the non-reference backends that implement it;
* ``test_module``: the ``tests/ops`` file that tests it on every backend;
* ``public``: the names ``ferfast.ops`` (and ``ferfast``) export for it.

``KERNELS`` declares the private helper ops (the backward kernels and Triton's fused multiply) the same way,
minus the reference and the public names. ``docs/ops.md`` has the checklists for adding an op or a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ferfast import _library as lib
from ferfast.reference.boxes import box_iou_ref, paired_box_iou_ref
from ferfast.reference.dtypes import acc_dtype
from ferfast.reference.masking import patchify_gather_ref, random_masking_ref, unshuffle_tokens_ref
from ferfast.reference.mixup import face_mixup_ref, facemix_loss_ref, mixup_soft_targets_ref
from ferfast.reference.patch_loss import masked_patch_mse_ref
from ferfast.reference.ssl import fixmatch_loss_ref

__all__ = [
    "KERNELS",
    "NATIVE_BACKENDS",
    "OPS",
    "PUBLIC_NAMES",
    "SPECS",
    "KernelSpec",
    "OpSpec",
    "register",
    "register_native_ops",
    "spec",
]

#: The backends that implement an op besides ``reference`` (every op has a reference).
NATIVE_BACKENDS = ("cpu", "cuda", "triton")

#: A backend's kernels its autograd formulas call: ``"patchify_gather"``/``"unshuffle_tokens"`` (their
#: backward ops) and optionally ``"scale_grad"`` (a fused :data:`ferfast._library.ScaleFn`).
Kernels = dict[str, Callable]


@dataclass(frozen=True)
class OpSpec:
    """One public op: see the module docstring for what each part feeds."""

    name: str
    schema: str
    reference: Callable
    fake: Callable
    #: whether the op has a gradient; then ``setup_context`` and ``backward`` are required (checked by the tests)
    differentiable: bool
    setup_context: Callable | None
    backward: Callable[[Kernels], Callable] | None
    test_module: str
    public: tuple[str, ...]
    backends: tuple[str, ...] = NATIVE_BACKENDS
    mutates_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class KernelSpec:
    """A private helper op (a backward kernel, Triton's fused multiply): no reference, no public name."""

    name: str
    schema: str
    fake: Callable
    test_module: str
    backends: tuple[str, ...] = NATIVE_BACKENDS


# ---- references with the ops' schemas ---------------------------------------------------------------------------


def _masked_patch_mse_reference(
    imgs: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool, compute_grad: bool
) -> tuple[Tensor, None]:
    loss = masked_patch_mse_ref(imgs, pred, mask, patch_size, norm_pix_loss)
    return loss.to(acc_dtype(imgs, pred)), None  # the reference differentiates with autograd


def _face_mixup_out_reference(x: Tensor, lam: Tensor, perm: Tensor, out: Tensor) -> None:
    b = x.shape[0]
    out.copy_(face_mixup_ref(x, lam, perm, out.shape[0] == 2 * b and b > 0))


def _facemix_loss_reference(
    logits_real: Tensor, logits_mixed: Tensor, y: Tensor, y_soft: Tensor, iou: Tensor, perm: Tensor, compute_grad: bool
) -> tuple[Tensor, None, None]:
    return facemix_loss_ref(logits_real, logits_mixed, y, y_soft, iou, perm), None, None


def _fixmatch_loss_reference(logits_weak: Tensor, logits_strong: Tensor, threshold: float, compute_grad: bool):
    return (*fixmatch_loss_ref(logits_weak, logits_strong, threshold), None)


# ---- the ops -----------------------------------------------------------------------------------------------------

SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        name="random_masking",
        schema="(Tensor noise, float mask_ratio) -> (Tensor ids_keep, Tensor mask, Tensor ids_restore)",
        reference=random_masking_ref,
        fake=lib.random_masking_fake,
        differentiable=False,
        setup_context=None,
        backward=None,
        test_module="test_random_masking",
        public=("random_masking",),
    ),
    OpSpec(
        name="patchify_gather",
        schema="(Tensor imgs, Tensor ids_keep, int patch_size) -> Tensor",
        reference=patchify_gather_ref,
        fake=lib.patchify_gather_fake,
        differentiable=True,
        setup_context=lib.patchify_gather_setup,
        backward=lambda k: lib.make_patchify_gather_backward(k["patchify_gather"]),
        test_module="test_patchify_gather",
        public=("patchify_gather",),
    ),
    OpSpec(
        name="unshuffle_tokens",
        schema="(Tensor x, Tensor mask_token, Tensor ids_restore, int num_prefix_tokens) -> Tensor",
        reference=unshuffle_tokens_ref,
        fake=lib.unshuffle_tokens_fake,
        differentiable=True,
        setup_context=lib.unshuffle_tokens_setup,
        backward=lambda k: lib.make_unshuffle_tokens_backward(k["unshuffle_tokens"]),
        test_module="test_unshuffle_tokens",
        public=("unshuffle_tokens",),
    ),
    OpSpec(
        name="masked_patch_mse",
        schema="(Tensor imgs, Tensor pred, Tensor mask, int patch_size, bool norm_pix_loss, bool compute_grad) "
        "-> (Tensor, Tensor)",
        reference=_masked_patch_mse_reference,
        fake=lib.masked_patch_mse_fake,
        differentiable=True,
        setup_context=lib.masked_patch_mse_setup,
        backward=lambda k: lib.make_masked_patch_mse_backward(lib.scale_fn(k)),
        test_module="test_masked_patch_mse",
        public=("masked_patch_mse", "MaskedPatchMSELoss", "fused_head_masked_mse"),
    ),
    OpSpec(
        name="box_iou",
        schema="(Tensor boxes1, Tensor boxes2) -> Tensor",
        reference=box_iou_ref,
        fake=lib.box_iou_fake,
        differentiable=False,
        setup_context=None,
        backward=None,
        test_module="test_box_iou",
        public=("box_iou",),
    ),
    OpSpec(
        name="paired_box_iou",
        schema="(Tensor boxes, Tensor perm) -> Tensor",
        reference=paired_box_iou_ref,
        fake=lib.paired_box_iou_fake,
        differentiable=False,
        setup_context=None,
        backward=None,
        test_module="test_box_iou",
        public=("paired_box_iou",),
    ),
    OpSpec(
        name="face_mixup",
        schema="(Tensor x, Tensor lam, Tensor perm, bool with_originals) -> Tensor",
        reference=face_mixup_ref,
        fake=lib.face_mixup_fake,
        differentiable=True,
        setup_context=lib.face_mixup_setup,
        backward=lambda k: lib.face_mixup_backward,
        test_module="test_face_mixup",
        public=("face_mixup", "FaceIoUMixup", "FaceMixBatch"),
    ),
    OpSpec(
        name="face_mixup_out",
        schema="(Tensor x, Tensor lam, Tensor perm, Tensor(a!) out) -> ()",
        reference=_face_mixup_out_reference,
        fake=lib.face_mixup_out_fake,
        differentiable=False,
        setup_context=None,
        backward=None,
        test_module="test_face_mixup",
        public=(),  # face_mixup(out=...)
        mutates_args=("out",),
    ),
    OpSpec(
        name="mixup_soft_targets",
        schema="(Tensor y, int num_classes, Tensor lam, Tensor perm, float label_smoothing) -> Tensor",
        reference=mixup_soft_targets_ref,
        fake=lib.mixup_soft_targets_fake,
        differentiable=False,
        setup_context=None,
        backward=None,
        test_module="test_mixup_soft_targets",
        public=("mixup_soft_targets",),
    ),
    OpSpec(
        name="facemix_loss",
        schema="(Tensor logits_real, Tensor logits_mixed, Tensor y, Tensor y_soft, Tensor iou, Tensor perm, "
        "bool compute_grad) -> (Tensor loss, Tensor grad_real, Tensor grad_mixed)",
        reference=_facemix_loss_reference,
        fake=lib.facemix_loss_fake,
        differentiable=True,
        setup_context=lib.facemix_loss_setup,
        backward=lambda k: lib.make_facemix_loss_backward(lib.scale_fn(k)),
        test_module="test_facemix_loss",
        public=("facemix_loss", "FaceMixLoss"),
    ),
    OpSpec(
        name="fixmatch_loss",
        schema="(Tensor logits_weak, Tensor logits_strong, float threshold, bool compute_grad) -> "
        "(Tensor loss, Tensor mask_rate, Tensor pseudo_labels, Tensor mask, Tensor grad_strong)",
        reference=_fixmatch_loss_reference,
        fake=lib.fixmatch_loss_fake,
        differentiable=True,
        setup_context=lib.fixmatch_loss_setup,
        backward=lambda k: lib.make_fixmatch_loss_backward(lib.scale_fn(k)),
        test_module="test_fixmatch_loss",
        public=("fixmatch_loss", "FixMatchLoss"),
    ),
)

KERNELS: tuple[KernelSpec, ...] = (
    KernelSpec(
        name="_patchify_gather_backward",
        schema="(Tensor grad, Tensor ids_keep, int patch_size, int channels, int height, int width) -> Tensor",
        fake=lib.patchify_gather_backward_fake,
        test_module="test_patchify_gather",
    ),
    KernelSpec(
        name="_unshuffle_tokens_backward",
        schema="(Tensor grad, Tensor ids_restore, int num_prefix_tokens, int num_visible) -> (Tensor, Tensor)",
        fake=lib.unshuffle_tokens_backward_fake,
        test_module="test_unshuffle_tokens",
    ),
    KernelSpec(
        name="_scale_grad",  # the losses' backward multiply in one pass (the C++ backends use torch ops)
        schema="(Tensor grad, Tensor scale, ScalarType dtype) -> Tensor",
        fake=lib.scale_grad_fake,
        test_module="test_loss_scaling",
        backends=("triton",),
    ),
)

OPS: dict[str, OpSpec] = {s.name: s for s in SPECS}
_ALL: dict[str, OpSpec | KernelSpec] = {**OPS, **{k.name: k for k in KERNELS}}

#: What ``ferfast.ops`` exports for the ops (besides ``set_value_checks``/``value_checks``), sorted.
PUBLIC_NAMES: tuple[str, ...] = tuple(sorted({name for s in SPECS for name in s.public}))


def spec(name: str) -> OpSpec | KernelSpec:
    """The declaration of op ``name`` (a public op or a private kernel)."""
    return _ALL[name]


def register(namespace: str, kernels: Kernels, with_fake: bool = True, backend: str | None = None) -> None:
    """Register fake kernels (optional) and autograd formulas of every op ``backend`` implements on ``namespace``."""
    prefix = f"{namespace}::"
    for op in SPECS:
        if backend is not None and backend not in op.backends:
            continue
        if with_fake:
            torch.library.register_fake(prefix + op.name)(op.fake)
        if op.differentiable:
            torch.library.register_autograd(prefix + op.name, op.backward(kernels), setup_context=op.setup_context)
    if with_fake:
        for k in KERNELS:
            if backend is None or backend in k.backends:
                torch.library.register_fake(prefix + k.name)(k.fake)


def register_native_ops() -> None:
    """Register the C++ library's ops (``ferfast::*``: the ``cpu`` and ``cuda`` backends) once ``_C`` is loaded."""
    ops = torch.ops.ferfast
    register(
        "ferfast",
        {
            "patchify_gather": ops._patchify_gather_backward.default,
            "unshuffle_tokens": ops._unshuffle_tokens_backward.default,
        },
        backend="cpu",
    )
