"""The stages' training steps against SSFER's losses written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferfast.engine.steps import autocast, pretrain_step, stage1_step, stage2_step, to_device
from ferfast.ops import FaceIoUMixup, paired_box_iou
from ferfast.reference import facemix_loss_ref

K = 7


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, K))


def batch(b: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 2, generator=g) * 0.4
    boxes = torch.cat([x0, x0 + 0.3 + torch.rand(b, 2, generator=g) * 0.3], dim=1)
    return {
        "images": torch.randn(b, 3, 8, 8, generator=g),
        "labels": torch.randint(0, K, (b,), generator=g),
        "boxes": boxes,
        "images_weak": torch.randn(b, 3, 8, 8, generator=g),
        "images_strong": torch.randn(b, 3, 8, 8, generator=g),
    }


def test_stage1_step_is_ssfers_loss_on_originals_and_mixed_images():
    model, data = tiny_classifier(), batch()
    out = stage1_step(model, data, FaceIoUMixup(K, seed=3))
    # By hand: the same Mixup draw, one forward over [x; lam x + (1-lam) x.flip(0)], SSFER's loss.
    again = FaceIoUMixup(K, seed=3)({"images": data["images"], "labels": data["labels"], "boxes": data["boxes"]})
    lam = float(again.lam)
    x = data["images"]
    mixed = lam * x + (1 - lam) * x.flip(0)
    logits = model(torch.cat([x, mixed]))
    b = x.shape[0]
    targets = lam * F.one_hot(data["labels"], K).float() + (1 - lam) * F.one_hot(data["labels"].flip(0), K).float()
    targets = targets * (1 - 0.1) + 0.1 / K  # label smoothing 0.1 (timm's mixup_target)
    expected = facemix_loss_ref(logits[:b], logits[b:], data["labels"], targets, again.iou, again.perm)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert set(out.stats) == {"loss", "lam", "face_iou"}
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in out.stats.values())  # no reads
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_random_pairing_mixes_each_image_with_a_drawn_partner():
    model, data = tiny_classifier(), batch(b=8)
    out = stage1_step(model, data, FaceIoUMixup(K, seed=4, pairing="random"))
    # By hand: the same generator draws the permutation first, then whether to mix (prob) and lam.
    rng = np.random.default_rng(4)
    perm = torch.from_numpy(rng.permutation(8))
    assert rng.random() < 1.0
    lam = float(rng.beta(1.0, 1.0))
    assert perm.tolist() != list(range(7, -1, -1)) and float(out.stats["lam"]) == pytest.approx(lam)
    x, y = data["images"], data["labels"]
    logits = model(torch.cat([x, lam * x + (1 - lam) * x[perm]]))
    targets = lam * F.one_hot(y, K).float() + (1 - lam) * F.one_hot(y[perm], K).float()
    targets = targets * (1 - 0.1) + 0.1 / K
    iou = paired_box_iou(data["boxes"], perm)
    expected = facemix_loss_ref(logits[:8], logits[8:], y, targets, iou, perm)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert float(out.stats["face_iou"]) == pytest.approx(float(iou.mean()))
    with pytest.raises(ValueError, match="pairing='flip'"):
        FaceIoUMixup(K, mode="pair", pairing="random")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_stage1_step_without_mixup_is_cross_entropy_with_its_label_smoothing(label_smoothing):
    model, data = tiny_classifier(), batch()
    out = stage1_step(model, data, None, label_smoothing)
    expected = F.cross_entropy(model(data["images"]), data["labels"], label_smoothing=label_smoothing)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    assert set(out.stats) == {"loss"} and not out.stats["loss"].requires_grad


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.0])
def test_stage2_step_is_fixmatch(threshold):
    student, teacher, data = tiny_classifier(0), tiny_classifier(1), batch()
    out = stage2_step(student, teacher, data, threshold=threshold, unlabeled_weight=5.0, label_smoothing=0.1)
    with torch.no_grad():
        probs = teacher(data["images_weak"]).softmax(-1)
    conf, pseudo = probs.max(-1)
    mask = (conf >= threshold).float()
    loss_x = F.cross_entropy(student(data["images"]), data["labels"], label_smoothing=0.1)
    loss_u = (F.cross_entropy(student(data["images_strong"]), pseudo, reduction="none") * mask).mean()
    torch.testing.assert_close(out.loss, loss_x + 5.0 * loss_u, rtol=1e-5, atol=1e-6)
    assert float(out.stats["mask_rate"]) == pytest.approx(float(mask.mean()))
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in out.stats.values())
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher only labels


def test_pretrain_step_calls_the_mae_with_the_mask_ratio():
    class StubMAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, imgs, mask_ratio):
            mask = (torch.arange(16) < int(16 * mask_ratio)).float().expand(imgs.shape[0], 16)
            return (imgs.mean() * self.w) ** 2, None, mask

    out = pretrain_step(StubMAE(), batch(), mask_ratio=0.75)
    assert float(out.stats["mask_ratio"]) == pytest.approx(0.75)
    assert out.loss.requires_grad


def test_autocast_and_to_device():
    with autocast(torch.device("cpu"), "bf16"):
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp16"):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float16
    with autocast(torch.device("cpu"), "fp32"):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast(torch.device("cpu"), "fp8")
    moved = to_device(batch(), torch.device("cpu"))
    assert moved["images"].device.type == "cpu"
