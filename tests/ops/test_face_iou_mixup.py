"""FaceIoUMixup: SSFER's stage-1 batch transform (paper semantics and the released code's in-place mix)."""

import pytest
import torch
import torch.nn.functional as F

import ferfast
from ferfast.ops.face_iou_mixup import RELATIVE_FALLBACK_BOX
from ferfast.reference import (
    SSFER_FALLBACK_BOX,
    face_mixup_ref,
    facemix_loss_ref,
    flip_perm,
    mixup_soft_targets_ref,
    paired_box_iou_ref,
    ssfer_stage1_loss_ref,
)
from tests.utils import BACKENDS, assert_close_to_ref, assert_identical, device_with_ops, is_interpreted, leaf

OPS = ("paired_box_iou", "face_mixup", "mixup_soft_targets", "facemix_loss")
MODULE_BACKENDS = [None, "reference", *BACKENDS]


@pytest.fixture
def device(backend):
    """The backend's device; ``None`` (auto) and ``reference`` run on the CPU."""
    return torch.device("cpu") if backend is None else device_with_ops(backend, OPS)


def make_batch(b: int, device, k: int = 7, with_boxes: bool = True, size: int = 8):
    """A stage-1 batch: normalised images, labels and relative face boxes."""
    batch = {"images": torch.randn(b, 3, size, size, device=device), "labels": torch.randint(0, k, (b,), device=device)}
    if with_boxes:
        xy = torch.rand(b, 2) * 0.5
        wh = 0.2 + torch.rand(b, 2) * 0.3
        batch["boxes"] = torch.cat([xy, xy + wh], dim=1).to(device)
    return batch


def expected_parts(batch, mixed_batch, k=7, smoothing=0.1, fallback=RELATIVE_FALLBACK_BOX):
    """The images, targets and IoU the reference gives for the lam and perm the module drew."""
    x = batch["images"].cpu()
    lam, perm = mixed_batch.lam.cpu(), mixed_batch.perm.cpu()
    boxes = batch.get("boxes")
    boxes = torch.tensor(fallback).expand(x.shape[0], 4) if boxes is None else boxes.cpu().float()
    boxes = torch.where(torch.isnan(boxes).any(1, keepdim=True), torch.tensor(fallback), boxes)
    return (
        face_mixup_ref(x.double(), lam.double(), perm),
        mixup_soft_targets_ref(batch["labels"].cpu(), k, lam.double(), perm, smoothing),
        paired_box_iou_ref(boxes.double(), perm),
    )


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_paper_mode(backend, batch_size, device):
    """Default: ``images`` is ``[x; mixed]`` (one forward pass), x is untouched, the loss splits the logits."""
    k = 7
    batch = make_batch(batch_size, device, k)
    x0 = batch["images"].clone()
    mixup = ferfast.FaceIoUMixup(num_classes=k, seed=0, backend=backend)
    out = mixup(batch)
    assert isinstance(out, ferfast.FaceMixBatch) and out.batch_size == batch_size and not out.ssfer_compat
    assert out.images.shape == (2 * batch_size, 3, 8, 8)
    assert_identical(batch["images"], x0, name="input images (unchanged)")
    assert_identical(out.images[:batch_size], x0, name="originals")
    assert out.images.data_ptr() != batch["images"].data_ptr()
    assert out.lam.shape == () and 0.0 <= float(out.lam) <= 1.0
    assert torch.equal(out.perm.cpu(), flip_perm(batch_size))
    assert torch.equal(out.labels, batch["labels"])
    images, targets, iou = expected_parts(batch, out, k)
    assert_close_to_ref(out.images[batch_size:], images, name="mixed images")
    assert_close_to_ref(out.targets, targets, name="targets")
    assert_close_to_ref(out.iou, iou, name="iou")

    logits = leaf(torch.randn(2 * batch_size, k), device)
    loss = out.loss(logits)
    loss.backward()
    real, mixed = logits.detach()[:batch_size], logits.detach()[batch_size:]
    functional = ferfast.facemix_loss(real, mixed, out.labels, out.targets, out.iou, out.perm, backend=backend)
    assert_close_to_ref(loss, functional.double(), name="loss vs facemix_loss on the split logits")
    lr, lm = leaf(real, "cpu", torch.float64), leaf(mixed, "cpu", torch.float64)
    ref = facemix_loss_ref(lr, lm, out.labels.cpu(), targets, iou, flip_perm(batch_size))
    ref.backward()
    assert_close_to_ref(loss, ref.detach(), name="loss")
    assert_close_to_ref(logits.grad, torch.cat([lr.grad, lm.grad]), name="grad logits")


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_paper_mode_gradient_reaches_the_images(backend, device):
    batch = make_batch(4, device)
    batch["images"].requires_grad_(True)
    out = ferfast.FaceIoUMixup(num_classes=7, seed=1, backend=backend)(batch)
    w = torch.randn(3 * 8 * 8, 7, device=device) * 0.1
    out.loss(out.images.flatten(1) @ w).backward()
    assert batch["images"].grad is not None and bool(batch["images"].grad.abs().sum() > 0)


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_ssfer_compat_mixes_in_place(backend, device):
    """ssfer_compat=True: the input tensor is mixed in place, ``images`` is it ([B]), and the loss uses the
    same logits for the "real" and the mixed images, as the released code does."""
    k, b = 7, 6
    batch = make_batch(b, device, k)
    x0 = batch["images"].clone()
    mixup = ferfast.FaceIoUMixup(num_classes=k, ssfer_compat=True, seed=3, backend=backend)
    out = mixup(batch)
    assert out.ssfer_compat and out.images is batch["images"] and out.images.shape == (b, 3, 8, 8)
    images, targets, iou = expected_parts({**batch, "images": x0}, out, k)
    assert_close_to_ref(batch["images"], images, name="input mixed in place")
    assert_close_to_ref(out.targets, targets, name="targets")
    logits = leaf(torch.randn(b, k), device)
    loss = out.loss(logits)
    loss.backward()
    lr = leaf(logits, "cpu", torch.float64)
    ref = facemix_loss_ref(lr, lr, out.labels.cpu(), targets, iou, flip_perm(b))
    ref.backward()
    assert_close_to_ref(loss, ref.detach(), name="loss (same logits twice)")
    assert_close_to_ref(logits.grad, lr.grad, name="grad logits")


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_ssfer_compat_equals_the_released_step(backend, device):
    """With SSFER's pixel fallback box and integer boxes, the module's loss is ``ssfer_stage1_loss_ref``'s."""
    k, b = 7, 8
    x = torch.randn(b, 3, 8, 8)
    y = torch.randint(0, k, (b,))
    dets = [torch.tensor([[20.0 + 3 * i, 30.0, 150.0 + 5 * i, 170.0 - 2 * i]]) for i in range(b)]
    dets[2], dets[5] = torch.zeros(0, 4), torch.zeros(2, 4)  # no face, two faces: the fallback box
    boxes = torch.stack([d[0] if len(d) == 1 else torch.full((4,), float("nan")) for d in dets])
    mixup = ferfast.FaceIoUMixup(
        num_classes=k, ssfer_compat=True, fallback_box=SSFER_FALLBACK_BOX, seed=7, backend=backend
    )
    out = mixup({"images": x.clone().to(device), "labels": y.to(device), "boxes": boxes.to(device)})
    lam = float(out.lam)
    w = torch.randn(3 * 8 * 8, k) * 0.1
    logits = leaf(out.images.cpu().flatten(1) @ w, device)
    loss = out.loss(logits)
    loss.backward()
    lo, lm = leaf(logits, "cpu"), leaf(logits, "cpu")
    ref_loss, ref_inputs = ssfer_stage1_loss_ref(lo, lm, x.clone(), y, dets, lam, k, 0.1)
    ref_loss.backward()
    assert_close_to_ref(out.images, ref_inputs.double(), name="mixed images vs SSFER")
    assert_close_to_ref(loss, ref_loss.double(), name="loss vs SSFER")
    assert_close_to_ref(logits.grad, (lo.grad + lm.grad).double(), name="grad vs SSFER")


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_odd_batch(batch_size):
    """SSFER's Mixup asserts an even batch; the paper semantics (any perm) does not need one."""
    batch = make_batch(batch_size, "cpu")
    with pytest.raises(ValueError, match="even"):
        ferfast.FaceIoUMixup(num_classes=7, ssfer_compat=True)(batch)
    out = ferfast.FaceIoUMixup(num_classes=7)(batch)
    assert out.images.shape[0] == 2 * batch_size
    out.loss(torch.randn(2 * batch_size, 7))


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_modes(backend, mode, device):
    b = 4 if is_interpreted(backend) else 10
    batch = make_batch(b, device)
    out = ferfast.FaceIoUMixup(num_classes=7, mode=mode, seed=5, backend=backend)(batch)
    lam = out.lam.cpu()
    if mode == "batch":
        assert lam.shape == ()
    else:
        assert lam.shape == (b,) and lam.dtype == torch.float32
        assert bool(((lam >= 0) & (lam <= 1)).all())
    if mode == "pair":  # one lam per pair: partners share it
        assert torch.equal(lam, lam[out.perm.cpu()])
    if mode == "elem":
        assert len(set(lam.tolist())) > 1
    images, targets, iou = expected_parts(batch, out)
    assert_close_to_ref(out.images[b:], images, name=f"mixed images ({mode})")
    assert_close_to_ref(out.targets, targets, name=f"targets ({mode})")
    assert_close_to_ref(out.iou, iou, name=f"iou ({mode})")


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_prob_zero_leaves_images_unmixed(mode):
    batch = make_batch(4, "cpu")
    out = ferfast.FaceIoUMixup(num_classes=7, mode=mode, prob=0.0, seed=0)(batch)
    assert bool((out.lam == 1).all())
    assert_identical(out.images[4:], batch["images"], name="lam = 1: the 'mixed' images are the originals")


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_without_boxes_the_real_term_has_weight_zero(backend, device):
    """No boxes: every face gets the fallback box, so partners overlap perfectly (IoU 1) and the loss is the
    mixed images' soft cross-entropy alone."""
    k, b = 7, 4
    batch = make_batch(b, device, k, with_boxes=False)
    out = ferfast.FaceIoUMixup(num_classes=k, seed=2, backend=backend)(batch)
    assert_close_to_ref(out.iou, torch.ones(b, dtype=torch.float64), name="iou")
    logits = leaf(torch.randn(2 * b, k), device)
    loss = out.loss(logits)
    loss.backward()
    soft_ce = F.cross_entropy(logits.detach()[b:].double().cpu(), out.targets.double().cpu(), reduction="sum") / b
    assert_close_to_ref(loss, soft_ce, name="loss = soft CE of the mixed images")
    grad_real = logits.grad[:b]
    assert_close_to_ref(
        grad_real,
        torch.zeros(b, k, dtype=torch.float64),
        name="grad of the real images' logits",
        atol=1e-6 * float(logits.grad[b:].abs().max()),
    )


@pytest.mark.parametrize("backend", MODULE_BACKENDS)
def test_nan_box_rows_take_the_fallback_box(backend, device):
    batch = make_batch(6, device)
    batch["boxes"][1] = float("nan")
    batch["boxes"][4, 2] = float("nan")  # one NaN coordinate is enough
    out = ferfast.FaceIoUMixup(num_classes=7, seed=0, backend=backend)(batch)
    boxes = batch["boxes"].cpu().clone()
    boxes[1] = boxes[4] = torch.tensor(RELATIVE_FALLBACK_BOX)
    assert_close_to_ref(out.iou, paired_box_iou_ref(boxes.double(), flip_perm(6)), name="iou")
    assert not bool(out.iou.isnan().any())
    assert out.iou[1].item() == out.iou[4].item()  # flip partners: IoU(b1, b4) both ways
    pixel = ferfast.FaceIoUMixup(num_classes=7, seed=0, fallback_box=SSFER_FALLBACK_BOX, backend=backend)
    px = make_batch(2, device)
    px["boxes"] = torch.tensor([[25.0, 25.0, 220.0, 220.0], [float("nan")] * 4], device=device)
    assert_close_to_ref(pixel(px).iou, torch.ones(2, dtype=torch.float64), name="pixel fallback")
    # pair_iou alone (what the demo measures the pairs with) gives forward's weights, without mixing anything
    mixer = ferfast.FaceIoUMixup(num_classes=7, seed=0, backend=backend)
    alone = mixer.pair_iou(batch["boxes"], flip_perm(6, device), 6, device)
    assert_identical(alone, out.iou, name="pair_iou")
    no_boxes = mixer.pair_iou(None, flip_perm(6, device), 6, device)
    assert_close_to_ref(no_boxes, torch.ones(6, dtype=torch.float64), name="no boxes: the fallback box both ways")
    with pytest.raises(ValueError, match="boxes"):
        mixer.pair_iou(batch["boxes"][:5], flip_perm(6, device), 6, device)


def test_seeded_reproducibility():
    batch = make_batch(6, "cpu")
    a = ferfast.FaceIoUMixup(num_classes=7, mode="elem", seed=123)
    b = ferfast.FaceIoUMixup(num_classes=7, mode="elem", seed=123)
    c = ferfast.FaceIoUMixup(num_classes=7, mode="elem", seed=124)
    for _ in range(3):  # the sequence of draws, not only the first
        oa, ob, oc = a(batch), b(batch), c(batch)
        assert_identical(oa.lam, ob.lam, name="lam")
        assert_identical(oa.images, ob.images, name="images")
        assert_identical(oa.targets, ob.targets, name="targets")
        assert not torch.equal(oa.lam, oc.lam)
    torch.manual_seed(0)
    d = ferfast.FaceIoUMixup(num_classes=7)  # seed=None draws one from torch's generator
    torch.manual_seed(0)
    e = ferfast.FaceIoUMixup(num_classes=7)
    assert torch.equal(d(batch).lam, e(batch).lam)


def test_loss_rejects_wrong_logits():
    batch = make_batch(4, "cpu")
    out = ferfast.FaceIoUMixup(num_classes=7, seed=0)(batch)
    for rows in (3, 5, 7, 12):
        with pytest.raises(ValueError, match="rows"):
            out.loss(torch.randn(rows, 7))
    with pytest.raises(ValueError, match="rows"):  # [2B] logits with logits_real: the mixed ones must be [B]
        out.loss(torch.randn(8, 7), logits_real=torch.randn(4, 7))
    compat = ferfast.FaceIoUMixup(num_classes=7, ssfer_compat=True, seed=0)(make_batch(4, "cpu"))
    with pytest.raises(ValueError, match="rows"):
        compat.loss(torch.randn(8, 7))  # compat images are [B]


def test_without_originals_needs_logits_real():
    k, b = 7, 4
    batch = make_batch(b, "cpu", k)
    x0 = batch["images"].clone()
    out = ferfast.FaceIoUMixup(num_classes=k, with_originals=False, seed=0)(batch)
    assert out.images.shape == (b, 3, 8, 8)
    assert_identical(batch["images"], x0, name="input unchanged")
    images, targets, iou = expected_parts(batch, out, k)
    assert_close_to_ref(out.images, images, name="mixed images")
    logits_mixed, logits_real = torch.randn(b, k), torch.randn(b, k)
    with pytest.raises(ValueError, match="logits_real"):
        out.loss(logits_mixed)
    loss = out.loss(logits_mixed, logits_real=logits_real)
    ref = facemix_loss_ref(logits_real.double(), logits_mixed.double(), out.labels, targets, iou, flip_perm(b))
    assert_close_to_ref(loss, ref, name="loss")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 7.0}, "num_classes"),
        ({"mixup_alpha": 0.0}, "mixup_alpha"),
        ({"mixup_alpha": True}, "mixup_alpha"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"mode": "cutmix"}, "mode"),
        ({"prob": -0.1}, "prob"),
        ({"fallback_box": (0.9, 0.1, 0.1, 0.9)}, "fallback_box"),
        ({"fallback_box": (0.1, 0.1, 0.9)}, "fallback_box"),
    ],
)
def test_module_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ferfast.FaceIoUMixup(**{"num_classes": 7, **kwargs})


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"labels": torch.randint(0, 7, (4,), dtype=torch.int32)}, ValueError, "labels"),
        ({"labels": torch.randint(0, 7, (3,))}, ValueError, "labels"),
        ({"labels": torch.tensor([0, 1, 2, 7])}, ValueError, "y"),
        ({"boxes": torch.rand(4, 3)}, ValueError, "boxes"),
        ({"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 3)}, ValueError, "boxes"),
        ({"boxes": torch.tensor([[0.5, 0.5, 0.1, 0.9]] * 4)}, ValueError, "boxes"),
        ({"images": torch.randint(0, 255, (4, 3, 8, 8))}, TypeError, "x"),
        ({"images": None}, TypeError, "images"),
    ],
)
def test_module_rejects_bad_batches(change, error, match):
    batch = {**make_batch(4, "cpu"), **change}
    with pytest.raises(error, match=match):
        ferfast.FaceIoUMixup(num_classes=7)(batch)
    with pytest.raises(ValueError, match="images"):
        ferfast.FaceIoUMixup(num_classes=7)({"labels": batch["labels"]})
    with pytest.raises(ValueError, match="mapping"):
        ferfast.FaceIoUMixup(num_classes=7)([batch["images"], batch["labels"]])


def test_module_repr():
    mixup = ferfast.FaceIoUMixup(num_classes=8, mode="pair", ssfer_compat=True)
    assert isinstance(mixup, torch.nn.Module) and list(mixup.parameters()) == []
    for part in ("num_classes=8", "mode='pair'", "ssfer_compat=True", "label_smoothing=0.1"):
        assert part in repr(mixup)
