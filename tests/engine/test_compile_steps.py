"""``torch.compile(fullgraph=True)`` of each stage's forward + loss: no graph break (a break is where a step reads
the host or leaves torch), the compiled loss equals the eager one, and backward runs through the graph.

Randomness is an input (MAE's masking noise, Mixup's ``lam`` and partners), as it must be for CUDA graphs. The
backend is ``aot_eager``: dynamo's tracing (what ``fullgraph`` checks) plus AOTAutograd's forward/backward split
through ferfast's custom ops (their fake kernels and autograd formulas), without inductor's slow first compile.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ferfast.engine.steps import stage2_step
from ferfast.models import create_model
from ferfast.ops import face_mixup, facemix_loss, fixmatch_loss, mixup_soft_targets, paired_box_iou

SIZE, K, B = 16, 7, 4
TINY_VIT = {"img_size": SIZE, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def eager_and_compiled(model, fn, *inputs):
    """``fn(model, *inputs)`` eager and compiled: the losses and the parameters' gradients of each."""
    results = []
    for run in (fn, compiled(fn)):
        model.zero_grad(set_to_none=True)
        loss = run(model, *inputs)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    return results


def assert_same(results):
    (loss, grads), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    assert len(grads_c) == len(grads) > 0
    for g_c, g in zip(grads_c, grads):
        torch.testing.assert_close(g_c, g, rtol=1e-4, atol=1e-6)


def images(seed=0):
    return torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_pretrain_forward_and_loss_compile_in_one_graph(norm_pix_loss):
    torch.manual_seed(0)
    mae = create_model(
        "mae_vit_demo",
        **TINY_VIT,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        norm_pix_loss=norm_pix_loss,
    )
    noise = torch.rand(B, mae.num_patches, generator=torch.Generator().manual_seed(1))

    def step(model, imgs, noise):
        loss, _pred, _mask = model(imgs, mask_ratio=0.75, noise=noise)
        return loss

    assert_same(eager_and_compiled(mae, step, images(), noise))


def test_stage1_forward_over_originals_and_mixed_and_the_facemix_loss_compile_in_one_graph():
    torch.manual_seed(0)
    model = create_model("vit_demo", num_classes=K, drop_path_rate=0.0, **TINY_VIT)
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, K, (B,), generator=g)
    x0 = torch.rand(B, 2, generator=g) * 0.4
    boxes = torch.cat([x0, x0 + 0.4], dim=1)
    lam = torch.tensor(0.3)  # FaceIoUMixup's draws, made before the step
    perm = torch.arange(B - 1, -1, -1)

    def step(model, x, y, boxes, lam, perm):
        iou = paired_box_iou(boxes, perm)
        targets = mixup_soft_targets(y, K, lam, perm, 0.1)
        logits = model(face_mixup(x, lam, perm, with_originals=True))  # one pass over [originals; mixed]
        return facemix_loss(logits[:B], logits[B:], y, targets, iou, perm)

    results = eager_and_compiled(model, step, images(), y, boxes, lam, perm)
    assert_same(results)
    # and it is SSFER's loss: one-hot CE by hand on the same forward pass
    with torch.no_grad():
        x = images()
        logits = model(torch.cat([x, 0.3 * x + 0.7 * x[perm]]))
        soft = (0.3 * F.one_hot(y, K) + 0.7 * F.one_hot(y[perm], K)).float() * 0.9 + 0.1 / K
        iou = paired_box_iou(boxes, perm)
        mixed = -(soft * logits[B:].log_softmax(-1)).sum(-1).sum()
        real = F.cross_entropy(logits[:B], y, reduction="none")
        expected = (mixed + ((1 - iou) * (real + real[perm])).sum()) / B
    torch.testing.assert_close(results[1][0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_stage2_student_forward_ce_and_fixmatch_loss_compile_in_one_graph(threshold):
    torch.manual_seed(0)
    student = create_model("vit_demo", num_classes=K, **TINY_VIT)
    teacher = create_model("vit_demo", num_classes=K, **TINY_VIT).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    batch = {
        "images": images(4),
        "images_weak": images(5),
        "images_strong": images(6),
        "labels": torch.randint(0, K, (B,), generator=g),
    }

    def step(model, batch):
        return stage2_step(model, teacher, batch, threshold=threshold, unlabeled_weight=5.0).loss

    assert_same(eager_and_compiled(student, step, batch))
    loss_u, mask_rate = fixmatch_loss(teacher(batch["images_weak"]), student(batch["images_strong"]), threshold)
    assert 0.0 <= float(mask_rate) <= 1.0 and loss_u.dim() == 0


def test_a_host_read_breaks_the_graph():
    """The check can fail: ``fullgraph=True`` refuses a step that reads a tensor on the host."""

    def step(model, x):
        loss = model(x).logsumexp(-1).mean()
        if float(loss) > 1e9:  # a host read (as the non-finite guard once was)
            return loss * 0
        return loss

    torch.manual_seed(0)
    model = create_model("vit_demo", num_classes=K, **TINY_VIT)
    with pytest.raises(Exception, match=r"(?i)graph break|data-dependent|Unsupported|item"):
        compiled(step)(model, images())
