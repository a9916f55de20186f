"""torch.compile(fullgraph=True) traces the ops without a graph break (fake kernels, autograd registration)."""

import pytest
import torch

import ferfast
from tests.utils import BACKENDS, assert_close_to_ref, backend_device

PATCH = 4


def mae_step(noise, imgs, w_embed, cls_token, mask_token, w_pred, backend):
    """A tiny MAE forward touching all four ops: mask, embed visible patches, unshuffle, loss."""
    ids_keep, mask, ids_restore = ferfast.random_masking(noise, 0.75, backend=backend)
    patches = ferfast.patchify_gather(imgs, ids_keep, PATCH, backend=backend)
    tokens = patches @ w_embed
    tokens = torch.cat([cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    decoded = ferfast.unshuffle_tokens(tokens, mask_token, ids_restore, backend=backend)
    decoded = decoded + decoded.mean(dim=1, keepdim=True)  # a stand-in for attention: tokens see each other
    pred = decoded[:, 1:] @ w_pred
    loss = ferfast.masked_patch_mse(imgs, pred, mask, PATCH, norm_pix_loss=True, backend=backend)
    return loss, ids_keep, mask


def make_inputs():
    b, c, h, w, d = 2, 3, 8, 16, 8
    pdim = PATCH * PATCH * c
    noise = torch.rand(b, (h // PATCH) * (w // PATCH))
    imgs = torch.randn(b, c, h, w)
    params = [torch.randn(pdim, d) * 0.2, torch.randn(1, 1, d), torch.randn(1, 1, d), torch.randn(d, pdim) * 0.2]
    return noise, imgs, params


def run(fn, noise, imgs, params, backend):
    imgs = imgs.clone().requires_grad_(True)
    params = [p.clone().requires_grad_(True) for p in params]
    loss, ids_keep, mask = fn(noise, imgs, *params, backend)
    loss.backward()
    return loss.detach(), ids_keep, mask, [imgs.grad, *(p.grad for p in params)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_all_ops(backend):
    """Every backend that runs here; under the interpreter the Triton ops are plain custom ops, which
    torch.compile traces (and calls) like any other."""
    device = backend_device(backend)
    torch._dynamo.reset()
    noise, imgs, params = make_inputs()
    noise, imgs, params = noise.to(device), imgs.to(device), [p.to(device) for p in params]
    compiled = torch.compile(mae_step, fullgraph=True, dynamic=False)
    got = run(compiled, noise, imgs, params, backend)
    eager = run(mae_step, noise, imgs, params, backend)
    reference = run(mae_step, noise, imgs, params, "reference")
    for expected in (eager, reference):
        assert torch.equal(got[1], expected[1]) and torch.equal(got[2], expected[2])
        assert_close_to_ref(got[0], expected[0].double(), name="loss", rtol=1e-5)
    names = ["grad imgs", "grad w_embed", "grad cls_token", "grad mask_token", "grad w_pred"]
    for name, g, e in zip(names, got[3], eager[3]):
        assert g is not None and bool(g.abs().sum() > 0), name
        assert_close_to_ref(g, e.double(), name=name, rtol=1e-5)
    # the compiled function runs again on new values
    noise2 = torch.rand_like(noise)
    again = run(compiled, noise2, imgs, params, backend)
    assert_close_to_ref(again[0], run(mae_step, noise2, imgs, params, backend)[0].double(), name="loss", rtol=1e-5)


# ---- SSFER: a stage-1 (face-IoU Mixup) step and a stage-2 (FixMatch) step -----------------------

NUM_CLASSES = 7
THRESHOLD = 0.5


def ssfer_step(x, y, boxes, lam, x_weak, x_strong, w, w_teacher, backend):
    """Stage 1: partner IoU, [x; mixed] in one batch, one forward pass of a linear "network", Mixup targets
    and SSFER's loss. Stage 2: the teacher's pseudo-labels on weak views, the student's CE on strong views."""
    b = x.shape[0]
    iou = ferfast.paired_box_iou(boxes, backend=backend)
    images = ferfast.face_mixup(x, lam, with_originals=True, backend=backend)
    logits = images.flatten(1) @ w
    targets = ferfast.mixup_soft_targets(y, NUM_CLASSES, lam, label_smoothing=0.1, backend=backend)
    stage1 = ferfast.facemix_loss(logits[:b], logits[b:], y, targets, iou, backend=backend)
    with torch.no_grad():
        logits_weak = x_weak.flatten(1) @ w_teacher
    logits_strong = x_strong.flatten(1) @ w
    stage2, rate, pseudo, mask = ferfast.fixmatch_loss(
        logits_weak, logits_strong, THRESHOLD, return_pseudo_labels=True, backend=backend
    )
    return stage1, stage2, rate, pseudo, mask


def make_ssfer_inputs():
    b, c, h, w = 4, 3, 4, 4
    d = c * h * w
    x = torch.randn(b, c, h, w)
    y = torch.randint(0, NUM_CLASSES, (b,))
    xy = torch.rand(b, 2) * 0.5
    boxes = torch.cat([xy, xy + 0.2 + torch.rand(b, 2) * 0.3], dim=1)
    lam = torch.rand(b)
    x_weak, x_strong = torch.randn(6, c, h, w), torch.randn(6, c, h, w)
    w_student, w_teacher = torch.randn(d, NUM_CLASSES) * 0.2, torch.randn(d, NUM_CLASSES) * 0.6
    # the confidence masks must be well-defined: no teacher row within 1e-4 of the threshold
    max_prob = torch.softmax(x_weak.flatten(1).double() @ w_teacher.double(), dim=1).max(1).values
    assert bool(((max_prob - THRESHOLD).abs() > 1e-4).all())
    assert 0 < int((max_prob >= THRESHOLD).sum()) < 6
    return [x, y, boxes, lam, x_weak, x_strong], [w_student, w_teacher]


def run_ssfer(fn, data, params, backend):
    x, *rest = data
    x = x.clone().requires_grad_(True)
    w = params[0].clone().requires_grad_(True)
    stage1, stage2, rate, pseudo, mask = fn(x, *rest, w, params[1], backend)
    (stage1 + stage2).backward()
    return [stage1.detach(), stage2.detach(), rate], [pseudo, mask], [x.grad, w.grad]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_ssfer_steps(backend):
    """paired_box_iou, face_mixup, mixup_soft_targets, facemix_loss and fixmatch_loss in one compiled graph
    (the public functions skip their value checks while compiling)."""
    device = backend_device(backend)
    torch._dynamo.reset()
    data, params = make_ssfer_inputs()
    data, params = [t.to(device) for t in data], [p.to(device) for p in params]
    compiled = torch.compile(ssfer_step, fullgraph=True, dynamic=False)
    got = run_ssfer(compiled, data, params, backend)
    eager = run_ssfer(ssfer_step, data, params, backend)
    reference = run_ssfer(ssfer_step, data, params, "reference")
    for expected in (eager, reference):
        for name, g, e in zip(["stage-1 loss", "stage-2 loss", "mask rate"], got[0], expected[0]):
            assert_close_to_ref(g, e.double(), name=name, rtol=1e-5)
        assert torch.equal(got[1][0], expected[1][0]), "pseudo-labels"
        assert torch.equal(got[1][1], expected[1][1]), "mask"
        for name, g, e in zip(["grad x", "grad w"], got[2], expected[2]):
            assert g is not None and bool(g.abs().sum() > 0), name
            assert_close_to_ref(g, e.double(), name=name, rtol=1e-5)
    # new values (another lam, other images) through the same compiled graph
    data2 = [data[0].flip(0), data[1], data[2], torch.rand_like(data[3]), *data[4:]]
    again = run_ssfer(compiled, data2, params, backend)
    expected = run_ssfer(ssfer_step, data2, params, "reference")
    assert_close_to_ref(again[0][0], expected[0][0].double(), name="stage-1 loss (new values)", rtol=1e-5)
    assert_close_to_ref(again[2][0], expected[2][0].double(), name="grad x (new values)", rtol=1e-5)
