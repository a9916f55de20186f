"""``FaceIoUMixup``: SSFER's stage-1 batch transform (face-IoU Mixup) as one module.

It draws the Mixup weight, mixes each image with its partner, builds the soft targets and
the partners' face-box IoU, and returns a :class:`FaceMixBatch` whose :meth:`~FaceMixBatch.loss`
turns the network's logits into SSFER's loss:

    mixup = FaceIoUMixup(num_classes=7)
    mixed = mixup({"images": x, "labels": y, "boxes": boxes})
    loss = mixed.loss(model(mixed.images))      # one forward pass over [originals; mixed]

Two semantics:

* ``ssfer_compat=False`` (default, the paper's): the real images' loss sees the *original*
  images; ``images`` is ``[x; mixed]`` (``[2B, ...]``), so one forward pass serves both.
* ``ssfer_compat=True`` (the released code's): SSFER's ``Mixup`` mixes the batch *in place*,
  so its "real" loss (and its face detector) see the mixed images. The input tensor is
  overwritten, ``images`` is that ``[B, ...]`` tensor, and the loss uses its logits for both
  terms (the released code runs the network twice on the same tensor; the passes differ only
  by dropout). The batch must be even, as SSFER asserts. Boxes come from the batch (the
  loader carries them through augmentation) rather than from a detector run on mixed images.

No host synchronisation on a GPU: ``lam`` and a random pairing are drawn on the host from this
module's numpy generator (so a resumed run repeats them) and reach the device through pinned
memory with ``non_blocking=True`` (a batch-mode ``lam`` is a fill kernel's argument); the flip
pairing is an ``arange`` and the fallback box a cached device constant. Nothing reads a tensor
back: the module's own ``lam``/``perm`` are valid by construction (``validate=False``), and the
batch's labels and boxes get value checks only on CPU tensors, while
:func:`ferfast.ops.value_checks` is on (see :mod:`ferfast.ops._checks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ferfast.ops import _checks
from ferfast.ops.box_iou import paired_box_iou
from ferfast.ops.face_mixup import face_mixup, mixup_soft_targets
from ferfast.ops.facemix_loss import facemix_loss
from ferfast.reference.boxes import SSFER_FALLBACK_BOX
from ferfast.reference.mixup import flip_perm

__all__ = ["RELATIVE_FALLBACK_BOX", "FaceIoUMixup", "FaceMixBatch"]

#: SSFER's fallback box ``[25, 25, 220, 220]`` on 224 x 224, in relative coordinates.
RELATIVE_FALLBACK_BOX = tuple(v / 224 for v in SSFER_FALLBACK_BOX)

MODES = ("batch", "pair", "elem")
PAIRINGS = ("flip", "random")


def host_to_device(
    values: np.ndarray | Sequence[float], device: torch.device, dtype: torch.dtype | None = None
) -> Tensor:
    """Host values as a tensor on ``device`` without blocking: CUDA copies go through pinned memory with
    ``non_blocking=True`` (the caching host allocator keeps the pinned block until the copy is done)."""
    src = torch.from_numpy(values) if isinstance(values, np.ndarray) else torch.tensor(values)
    if dtype is not None:
        src = src.to(dtype)
    if device.type != "cuda":
        return src.to(device)
    return src.pin_memory().to(device, non_blocking=True)


@dataclass
class FaceMixBatch:
    """What a stage-1 training step needs after face-IoU Mixup."""

    images: Tensor  #: ``[2B, ...]`` originals then mixed images, or ``[B, ...]`` mixed images
    labels: Tensor  #: ``[B]`` int64 labels of the real images
    targets: Tensor  #: ``[B, K]`` soft Mixup targets of the mixed images
    iou: Tensor  #: ``[B]`` IoU of each face with its partner's
    perm: Tensor  #: ``[B]`` partner of each image
    lam: Tensor  #: Mixup weight: 0-d (``batch`` mode) or ``[B]``
    ssfer_compat: bool = False
    backend: str | None = None

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    def loss(self, logits: Tensor, logits_real: Tensor | None = None) -> Tensor:
        """SSFER's loss (:func:`~ferfast.ops.facemix_loss`) from the logits of :attr:`images`.

        ``logits`` is ``[2B, K]`` when :attr:`images` holds originals and mixed images. When it holds
        only the mixed images (``with_originals=False``), pass the originals' logits as ``logits_real``;
        with ``ssfer_compat`` the mixed images' logits serve as the "real" ones, as in the released code.
        """
        b = self.batch_size
        if logits.shape[0] == 2 * b and logits_real is None and not self.ssfer_compat:
            logits_real, logits_mixed = logits[:b], logits[b:]
        elif logits.shape[0] == b:
            logits_mixed = logits
            if logits_real is None:
                if not self.ssfer_compat:
                    raise ValueError(
                        "logits holds only the mixed images: pass logits_real (the originals' logits), or mix "
                        "with with_originals=True and run the network once over FaceMixBatch.images"
                    )
                logits_real = logits
        else:
            raise ValueError(f"logits must have {2 * b} rows ([originals; mixed]) or {b}, got {tuple(logits.shape)}")
        return facemix_loss(
            logits_real, logits_mixed, self.labels, self.targets, self.iou, self.perm, backend=self.backend
        )


class FaceIoUMixup(nn.Module):
    """SSFER's face-IoU Mixup (stage 1): Mixup whose loss weights come from the faces' IoU of each pair.

    Args:
        num_classes: K.
        mixup_alpha: ``lam ~ Beta(alpha, alpha)`` (SSFER: 1.0).
        label_smoothing: smoothing of the mixed images' targets (SSFER: 0.1).
        mode: ``"batch"`` (one ``lam`` per batch, SSFER), ``"pair"`` (one per pair) or ``"elem"`` (one per image).
        prob: probability of mixing a batch (otherwise ``lam = 1``: the "mixed" images are the originals).
        with_originals: return ``[originals; mixed]`` for one forward pass (paper semantics only).
        ssfer_compat: reproduce the released code (in-place mix; see the module docstring).
        fallback_box: xyxy box for images whose face is unknown (rows of NaN in ``boxes``, or no ``boxes``),
            in the boxes' units; default SSFER's ``[25, 25, 220, 220]`` of 224 x 224, as relative coordinates.
        seed: seed of the generator of ``lam`` (and of the random pairing), numpy; ``None`` draws one from torch's
            generator.
        backend: ferfast backend of the ops.
        pairing: the partner of image ``i``: ``"flip"`` (``B-1-i``, SSFER's and timm's) or ``"random"`` (a random
            permutation of the batch drawn from this module's generator, as Zhang et al.'s Mixup; ``"pair"`` mode
            needs ``"flip"``).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 1.0,
        label_smoothing: float = 0.1,
        mode: str = "batch",
        prob: float = 1.0,
        with_originals: bool = True,
        ssfer_compat: bool = False,
        fallback_box: tuple[float, float, float, float] = RELATIVE_FALLBACK_BOX,
        seed: int | None = None,
        backend: str | None = None,
        pairing: str = "flip",
    ) -> None:
        super().__init__()
        self.num_classes = _checks.positive_int(num_classes, "num_classes")
        if not isinstance(mixup_alpha, (int, float)) or isinstance(mixup_alpha, bool) or not mixup_alpha > 0:
            raise ValueError(f"mixup_alpha must be a positive number, got {mixup_alpha!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.label_smoothing = _checks.unit_interval(label_smoothing, "label_smoothing")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if pairing == "random" and mode == "pair":
            raise ValueError("mode='pair' shares lam between flip partners: it needs pairing='flip'")
        self.pairing = pairing
        self.prob = _checks.unit_interval(prob, "prob")
        self.with_originals = bool(with_originals)
        self.ssfer_compat = bool(ssfer_compat)
        if len(fallback_box) != 4 or fallback_box[2] < fallback_box[0] or fallback_box[3] < fallback_box[1]:
            raise ValueError(f"fallback_box must be xyxy with x2 >= x1 and y2 >= y1, got {fallback_box!r}")
        self.fallback_box = tuple(float(v) for v in fallback_box)
        self._fallback_cache: dict[torch.device, Tensor] = {}
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self.rng = np.random.default_rng(seed)
        self.backend = backend

    def sample_lam(self, batch: int) -> np.ndarray | float:
        """Mixup weights: a float (``batch`` mode) or ``[B]`` float32 (``pair``: shared by flip partners; ``elem``)."""
        if self.mode == "batch":
            return float(self.rng.beta(self.mixup_alpha, self.mixup_alpha)) if self.rng.random() < self.prob else 1.0
        lam = self.rng.beta(self.mixup_alpha, self.mixup_alpha, size=batch).astype(np.float32)
        lam = np.where(self.rng.random(batch) < self.prob, lam, np.float32(1.0))
        if self.mode == "pair":
            p = np.arange(batch - 1, -1, -1)  # flip pairing, as forward uses
            idx = np.arange(batch)
            lam = np.where(idx <= p, lam, lam[p])  # the smaller index of each pair decides
        return lam.astype(np.float32)

    def sample_perm(self, batch: int, device: torch.device) -> Tensor:
        """The partner of each image: ``B-1-i`` (``flip``) or a permutation drawn from the generator (``random``)."""
        if self.pairing == "flip":
            return flip_perm(batch, device)
        return host_to_device(self.rng.permutation(batch).astype(np.int64), device)

    def lam_tensor(self, lam: np.ndarray | float, device: torch.device) -> Tensor:
        """:meth:`sample_lam`'s draw as a float32 device tensor (0-d or ``[B]``), with no blocking copy."""
        if isinstance(lam, float):
            return torch.full((), lam, dtype=torch.float32, device=device)  # the value is a kernel argument
        return host_to_device(lam, device, torch.float32)

    def fallback_boxes(self, device: torch.device) -> Tensor:
        """``fallback_box`` as a ``[4]`` float32 tensor on ``device``, copied once per device and cached."""
        box = self._fallback_cache.get(device)
        if box is None:
            box = self._fallback_cache[device] = host_to_device(list(self.fallback_box), device, torch.float32)
        return box

    def pair_iou(self, boxes: Tensor | None, perm: Tensor, batch: int, device: torch.device) -> Tensor:
        """``[B]`` IoU of each image's face box with its partner's (``perm``): the weights :meth:`forward` uses.
        Rows of NaN, or no ``boxes``, take ``fallback_box``."""
        fallback = self.fallback_boxes(device)
        if boxes is None:
            boxes = fallback.expand(batch, 4)
        else:
            boxes = _checks.tensor(boxes, "boxes")
            if tuple(boxes.shape) != (batch, 4):
                raise ValueError(f"boxes must have shape [{batch}, 4] (xyxy face boxes), got {tuple(boxes.shape)}")
            boxes = boxes.to(device=device, dtype=torch.float32)
            boxes = torch.where(torch.isnan(boxes).any(dim=1, keepdim=True), fallback, boxes)
        # Value checks (CPU tensors only, see ferfast.ops._checks) stay on for the batch's boxes;
        # perm is this module's own draw, valid by construction.
        return paired_box_iou(boxes, perm, backend=self.backend)

    def forward(self, batch: Mapping[str, Tensor]) -> FaceMixBatch:
        """``batch``: ``images`` [B, ...], ``labels`` [B] int64, optional ``boxes`` [B, 4] xyxy face boxes."""
        if not isinstance(batch, Mapping) or "images" not in batch or "labels" not in batch:
            raise ValueError("FaceIoUMixup takes a batch mapping with 'images' and 'labels' (and 'boxes')")
        x, y = _checks.tensor(batch["images"], "images"), _checks.tensor(batch["labels"], "labels")
        b = x.shape[0]
        if y.dtype != torch.long or tuple(y.shape) != (b,):
            raise ValueError(
                f"labels must be [{b}] int64 class labels, got {tuple(y.shape)} {y.dtype} "
                "(soft labels: use mixup_soft_targets and facemix_loss directly)"
            )
        if self.ssfer_compat and b % 2:
            raise ValueError(f"ssfer_compat=True needs an even batch (SSFER's Mixup asserts it), got {b}")
        perm = self.sample_perm(b, x.device)
        iou = self.pair_iou(batch.get("boxes"), perm, b, x.device)
        lam = self.lam_tensor(self.sample_lam(b), x.device)
        targets = mixup_soft_targets(y, self.num_classes, lam, perm, self.label_smoothing, backend=self.backend)
        if self.ssfer_compat:
            with torch.no_grad():  # SSFER mixes the batch in place
                x.copy_(face_mixup(x, lam, perm, backend=self.backend, validate=False))
            images = x
        else:
            images = face_mixup(x, lam, perm, with_originals=self.with_originals, backend=self.backend, validate=False)
        return FaceMixBatch(images, y, targets, iou, perm, lam, self.ssfer_compat, self.backend)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, label_smoothing={self.label_smoothing}, "
            f"mode={self.mode!r}, pairing={self.pairing!r}, prob={self.prob}, with_originals={self.with_originals}, "
            f"ssfer_compat={self.ssfer_compat}"
        )
