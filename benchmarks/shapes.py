"""Shared shape registry of the benchmarks (Liger's ``benchmark_model_configs.py``): never hardcode shapes in a
``bench_*.py``.

Each entry is one MAE pretraining configuration; every op takes the tensors it needs from it:

- ``masked_patch_mse`` / ``patchify_gather`` / ``random_masking``: ``imgs [B, C, H, W]``,
  ``pred [B, L, p*p*C]``, ``noise``/``mask [B, L]``, ``ids_keep [B, K]``;
- ``unshuffle_tokens``: ``x [B, 1 + K, D]`` (cls + visible tokens of the decoder width D),
  ``ids_restore [B, L]`` -> ``[B, 1 + L, D]``;
- ``fused_head_masked_mse``: ``h [B, L, D]``, ``weight [p*p*C, D]``, ``bias [p*p*C]``.

A second, small registry (:class:`ClsShape`) holds the classification batches of SSFER's face-IoU Mixup
(stage 1) and FixMatch (stage 2); a third (:class:`TrainShape`, at the end) the whole training steps of
``bench_train_step.py`` (a model, its batch and its precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ferfast.reference import num_kept, random_masking_ref

__all__ = [
    "CLS_REGISTRIES",
    "FIXMATCH_SHAPES",
    "MIXUP_SHAPES",
    "PRETRAIN_STEP_SHAPES",
    "SHAPES",
    "STAGE1_STEP_SHAPES",
    "STAGE2_STEP_SHAPES",
    "TRAIN_REGISTRIES",
    "ClsShape",
    "MAEShape",
    "Masking",
    "TrainShape",
    "by_name",
    "cls_by_name",
    "cls_images",
    "cls_labels",
    "cls_logits",
    "decoder_tokens",
    "detections",
    "face_boxes",
    "head",
    "images",
    "masking",
    "mixup_lam",
    "predictions",
    "selected_cls_shapes",
    "selected_shapes",
    "selected_train_shapes",
    "train_by_name",
]


@dataclass(frozen=True)
class MAEShape:
    name: str
    batch: int
    channels: int
    img_size: int
    patch: int
    mask_ratio: float
    decoder_dim: int
    dtype: torch.dtype = torch.float32
    quick: bool = False  # part of the ``--quick`` smoke run

    @property
    def grid(self) -> int:
        return self.img_size // self.patch

    @property
    def num_patches(self) -> int:  # L
        return self.grid * self.grid

    @property
    def num_keep(self) -> int:  # K = int(L * (1 - mask_ratio)), MAE's len_keep
        return num_kept(self.num_patches, self.mask_ratio)

    @property
    def patch_dim(self) -> int:  # p*p*C
        return self.patch * self.patch * self.channels

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    # Tensor sizes (elements) shared by the bytes formulas of the bench files.
    @property
    def imgs_numel(self) -> int:
        return self.batch * self.channels * self.img_size * self.img_size

    @property
    def pred_numel(self) -> int:
        return self.batch * self.num_patches * self.patch_dim

    @property
    def visible_patches_numel(self) -> int:
        return self.batch * self.num_keep * self.patch_dim

    def describe_images(self) -> str:
        b, c, s, p = self.batch, self.channels, self.img_size, self.patch
        return f"imgs {b}x{c}x{s}x{s} p{p} (L={self.num_patches}, K={self.num_keep})"

    def describe_tokens(self) -> str:
        b, k, n, d = self.batch, self.num_keep, self.num_patches, self.decoder_dim
        return f"x {b}x(1+{k})x{d} -> {b}x(1+{n})x{d}"


SHAPES: tuple[MAEShape, ...] = (
    # MAE ViT-B/16 pretraining step: the shape the kernels are tuned for.
    MAEShape("B64-224-p16", batch=64, channels=3, img_size=224, patch=16, mask_ratio=0.75, decoder_dim=512),
    # A smaller one (also the --quick smoke shape): L = 49, K = 12.
    MAEShape("B16-112-p16", batch=16, channels=3, img_size=112, patch=16, mask_ratio=0.75, decoder_dim=512, quick=True),
)


def by_name(name: str) -> MAEShape:
    for s in SHAPES:
        if s.name == name:
            return s
    raise KeyError(f"no benchmark shape {name!r}; known: {[s.name for s in SHAPES]}")


def selected_shapes(quick: bool) -> list[MAEShape]:
    """The shapes a run covers: all of them, or the small ones under ``--quick``."""
    return [s for s in SHAPES if s.quick or not quick]


# ---- inputs of a shape (seeded, built on the CPU then moved, so every device sees the same values) -------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape: MAEShape, device: torch.device) -> torch.Tensor:
    """``imgs [B, C, H, W]``, normalised-image-like values."""
    b, c, s = shape.batch, shape.channels, shape.img_size
    return torch.randn(b, c, s, s, generator=_gen(1)).to(device, shape.dtype)


def predictions(shape: MAEShape, device: torch.device, requires_grad: bool = False) -> torch.Tensor:
    """The decoder's ``pred [B, L, p*p*C]``."""
    pred = torch.randn(shape.batch, shape.num_patches, shape.patch_dim, generator=_gen(2))
    return pred.to(device, shape.dtype).requires_grad_(requires_grad)


class Masking(NamedTuple):
    noise: torch.Tensor  # [B, L] fp32
    ids_keep: torch.Tensor  # [B, K] int64
    mask: torch.Tensor  # [B, L] fp32, 1 = removed
    ids_restore: torch.Tensor  # [B, L] int64


def masking(shape: MAEShape, device: torch.device) -> Masking:
    """MAE's random masking of the shape (computed by the reference, on the CPU)."""
    noise = torch.rand(shape.batch, shape.num_patches, generator=_gen(3))
    ids_keep, mask, ids_restore = random_masking_ref(noise, shape.mask_ratio)
    return Masking(noise.to(device), ids_keep.to(device), mask.to(device), ids_restore.to(device))


def decoder_tokens(shape: MAEShape, device: torch.device, requires_grad: bool = False) -> tuple:
    """``x [B, 1 + K, D]`` (cls + visible tokens after ``decoder_embed``) and MAE's ``mask_token [1, 1, D]``."""
    g = _gen(4)
    x = torch.randn(shape.batch, 1 + shape.num_keep, shape.decoder_dim, generator=g)
    token = torch.randn(1, 1, shape.decoder_dim, generator=g) * 0.02
    return (
        x.to(device, shape.dtype).requires_grad_(requires_grad),
        token.to(device, shape.dtype).requires_grad_(requires_grad),
    )


def head(shape: MAEShape, device: torch.device, requires_grad: bool = False) -> tuple:
    """Decoder output ``h [B, L, D]`` (cls removed) and ``decoder_pred``'s ``weight [p*p*C, D]``, ``bias``."""
    g = _gen(5)
    d, pd = shape.decoder_dim, shape.patch_dim
    h = torch.randn(shape.batch, shape.num_patches, d, generator=g)
    weight = torch.randn(pd, d, generator=g) * d**-0.5
    bias = torch.randn(pd, generator=g) * 0.02
    return tuple(t.to(device, shape.dtype).requires_grad_(requires_grad) for t in (h, weight, bias))


# ---- classification batches: SSFER's stage 1 (face-IoU Mixup) and stage 2 (FixMatch) ---------------------------
#
# A separate registry: these ops see images, labels, face boxes and K-way logits, not MAE's patches. A bench
# takes them through the ``mixup_shape`` / ``fixmatch_shape`` fixtures (conftest.py), ``--quick`` included.
#
# - stage 1 (``bench_face_mixup.py``): ``x [B, C, S, S]`` normalised images, ``y [B]`` labels in [0, K),
#   ``boxes [B, 4]`` relative xyxy face boxes (``detections``: the same as SSFER's per-image ``[1, 4]`` pixel
#   boxes), ``lam`` a fixed Beta(1, 1) draw, ``logits_real`` / ``logits_mixed [B, K]`` (the network's outputs);
# - FixMatch (``bench_fixmatch_loss.py``): ``logits_weak [B, K]`` (teacher, weak view) and ``logits_strong``.


@dataclass(frozen=True)
class ClsShape:
    name: str
    batch: int
    num_classes: int
    channels: int = 3
    img_size: int = 224
    dtype: torch.dtype = torch.float32
    quick: bool = False  # part of the ``--quick`` smoke run

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def image_numel(self) -> int:  # one image
        return self.channels * self.img_size * self.img_size

    @property
    def images_numel(self) -> int:  # the batch
        return self.batch * self.image_numel

    @property
    def logits_numel(self) -> int:
        return self.batch * self.num_classes

    def describe_images(self) -> str:
        b, c, s, k = self.batch, self.channels, self.img_size, self.num_classes
        return f"x {b}x{c}x{s}x{s}, K={k}"

    def describe_logits(self) -> str:
        return f"logits {self.batch}x{self.num_classes}"


MIXUP_SHAPES: tuple[ClsShape, ...] = (
    # SSFER's stage-1 batches on RAF-DB (7 expressions), 224 x 224 crops.
    ClsShape("B32-224-K7", batch=32, num_classes=7),
    ClsShape("B64-224-K7", batch=64, num_classes=7),
    # The --quick smoke shape (even, as SSFER's in-place Mixup needs).
    ClsShape("B8-64-K7", batch=8, num_classes=7, img_size=64, quick=True),
)

FIXMATCH_SHAPES: tuple[ClsShape, ...] = (
    ClsShape("B64-K7", batch=64, num_classes=7),
    # FixMatch's unlabeled batch: mu = 7 times the labeled batch of 64.
    ClsShape("B448-K7-mu7", batch=448, num_classes=7),
    ClsShape("B16-K7", batch=16, num_classes=7, quick=True),
)

#: fixture name -> its registry (conftest.py parametrizes each fixture a bench asks for).
CLS_REGISTRIES: dict[str, tuple[ClsShape, ...]] = {"mixup_shape": MIXUP_SHAPES, "fixmatch_shape": FIXMATCH_SHAPES}


def cls_by_name(fixture: str, name: str) -> ClsShape:
    registry = CLS_REGISTRIES[fixture]
    for s in registry:
        if s.name == name:
            return s
    raise KeyError(f"no {fixture} {name!r}; known: {[s.name for s in registry]}")


def selected_cls_shapes(fixture: str, quick: bool) -> list[ClsShape]:
    """The ``fixture``'s shapes a run covers: all of them, or the small ones under ``--quick``."""
    return [s for s in CLS_REGISTRIES[fixture] if s.quick or not quick]


def cls_images(shape: ClsShape, device: torch.device) -> torch.Tensor:
    """``x [B, C, S, S]``, normalised-image-like values."""
    b, c, s = shape.batch, shape.channels, shape.img_size
    return torch.randn(b, c, s, s, generator=_gen(11)).to(device, shape.dtype)


def cls_labels(shape: ClsShape, device: torch.device) -> torch.Tensor:
    """``y [B]`` int64 class labels in ``[0, K)``."""
    return torch.randint(0, shape.num_classes, (shape.batch,), generator=_gen(12)).to(device)


def face_boxes(shape: ClsShape, device: torch.device) -> torch.Tensor:
    """``[B, 4]`` relative xyxy face boxes: valid (``x1 < x2``, ``y1 < y2``, inside ``[0, 1]``), face-crop-like
    (centre in ``[0.35, 0.65]``, side in ``[0.4, 0.9]``), so that partners overlap by varying amounts."""
    g = _gen(13)
    centre = 0.35 + 0.3 * torch.rand(shape.batch, 2, generator=g)
    half = (0.4 + 0.5 * torch.rand(shape.batch, 2, generator=g)) / 2
    boxes = torch.cat([centre - half, centre + half], dim=1).clamp(0.0, 1.0)
    return boxes.to(device, torch.float32)


def detections(shape: ClsShape, boxes: torch.Tensor) -> list[torch.Tensor]:
    """SSFER's detector output for ``boxes``: one ``[1, 4]`` xyxy pixel box per image (CPU, float32)."""
    pixels = boxes.detach().cpu().float() * shape.img_size
    return [pixels[i : i + 1].clone() for i in range(shape.batch)]


def mixup_lam(seed: int = 14) -> float:
    """A fixed ``lam ~ Beta(1, 1)`` (SSFER's ``mixup_alpha = 1``; Beta(1, 1) is uniform on [0, 1])."""
    return float(torch.rand((), generator=_gen(seed)))


def cls_logits(shape: ClsShape, device: torch.device, seed: int, scale: float = 1.0, requires_grad: bool = False):
    """``[B, K]`` logits (``scale * N(0, 1)``)."""
    logits = torch.randn(shape.batch, shape.num_classes, generator=_gen(seed)) * scale
    return logits.to(device, shape.dtype).requires_grad_(requires_grad)


# ---- whole training steps (``bench_train_step.py``): forward + backward + AdamW step of a model ----------------
#
# - pretraining (``pretrain_step_shape``): MAE ViT-B/16 on 224 x 224 faces, mask ratio 0.75, SSFER's norm-pix loss;
# - stage 1 (``stage1_step_shape``): the ViT-B/16 classifier with face-IoU Mixup, one forward pass over
#   ``[originals; mixed]`` (2B images) for a labeled batch of B = 32 (SSFER's), K = 7 (RAF-DB);
# - stage 2 (``stage2_step_shape``): FixMatch, B labeled images + B unlabeled ones (weak and strong views).
#
# The inputs, weights and optimizer state are fp32; on a GPU ferfast's steps run under ``precision`` autocast (bf16,
# the engine's default there), on a CPU in fp32. ``devices``: where a shape runs (ViT-B/16 at batch 8 is the CPU's
# shape; the demo's small models on 64 x 64 images run everywhere and are the ``--quick`` shapes).


@dataclass(frozen=True)
class TrainShape:
    name: str
    model: str  # a ferfast.models name (create_model)
    batch: int  # images per step (stage 1: labeled images; the network sees 2 x batch)
    img_size: int = 224
    mask_ratio: float = 0.75  # pretraining
    num_classes: int = 7  # stage 1
    channels: int = 3
    precision: str = "bf16"  # autocast on a GPU (ferfast.engine.steps.autocast); fp32 on a CPU
    dtype: torch.dtype = torch.float32  # inputs and weights
    quick: bool = False
    devices: tuple[str, ...] = ("cuda",)

    @property
    def dtype_name(self) -> str:
        return f"{self.precision} autocast, {str(self.dtype).removeprefix('torch.')} weights and inputs"

    @property
    def cls(self) -> ClsShape:
        """The stage-1 batch as a :class:`ClsShape` (for :func:`cls_images`, :func:`cls_labels`, :func:`face_boxes`)."""
        return ClsShape(self.name, self.batch, self.num_classes, self.channels, self.img_size, self.dtype)

    def describe(self) -> str:
        b, c, s = self.batch, self.channels, self.img_size
        return f"{self.model}, imgs {b}x{c}x{s}x{s}"


_BOTH = ("cuda", "cpu")
_CPU = ("cpu",)

PRETRAIN_STEP_SHAPES: tuple[TrainShape, ...] = (
    TrainShape("mae_vit_base_patch16-224-B64", "mae_vit_base_patch16", batch=64),
    TrainShape("mae_vit_base_patch16-224-B128", "mae_vit_base_patch16", batch=128),
    TrainShape("mae_vit_base_patch16-224-B8", "mae_vit_base_patch16", batch=8, devices=_CPU),
    TrainShape("mae_vit_demo-64-B8", "mae_vit_demo", batch=8, img_size=64, quick=True, devices=_BOTH),
)

STAGE1_STEP_SHAPES: tuple[TrainShape, ...] = (
    TrainShape("vit_base_patch16-224-B32", "vit_base_patch16", batch=32),
    TrainShape("vit_base_patch16-224-B8", "vit_base_patch16", batch=8, devices=_CPU),
    TrainShape("vit_demo-64-B8", "vit_demo", batch=8, img_size=64, quick=True, devices=_BOTH),
)

STAGE2_STEP_SHAPES: tuple[TrainShape, ...] = (
    TrainShape("vit_base_patch16-224-B64", "vit_base_patch16", batch=64),
    TrainShape("vit_base_patch16-224-B8", "vit_base_patch16", batch=8, devices=_CPU),
    TrainShape("vit_demo-64-B8", "vit_demo", batch=8, img_size=64, quick=True, devices=_BOTH),
)

#: fixture name -> its registry (``bench_train_step.py`` parametrizes each fixture it asks for).
TRAIN_REGISTRIES: dict[str, tuple[TrainShape, ...]] = {
    "pretrain_step_shape": PRETRAIN_STEP_SHAPES,
    "stage1_step_shape": STAGE1_STEP_SHAPES,
    "stage2_step_shape": STAGE2_STEP_SHAPES,
}


def train_by_name(fixture: str, name: str) -> TrainShape:
    registry = TRAIN_REGISTRIES[fixture]
    for s in registry:
        if s.name == name:
            return s
    raise KeyError(f"no {fixture} {name!r}; known: {[s.name for s in registry]}")


def selected_train_shapes(fixture: str, quick: bool, device: str | None = None) -> list[TrainShape]:
    """The ``fixture``'s shapes a run covers (on ``device``, if given): all of them, or the small ones under
    ``--quick``."""
    return [s for s in TRAIN_REGISTRIES[fixture] if (s.quick or not quick) and (device is None or device in s.devices)]
