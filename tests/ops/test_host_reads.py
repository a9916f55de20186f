"""No tensor-to-host reads in face-IoU Mixup and the fused ops' hot path (each read synchronises a GPU).

On a GPU the ops run their value checks only when asked (``validate=True``), ``FaceIoUMixup`` copies its
host draws through pinned memory without blocking, and the losses' backward multiplies by ``grad_loss``
on the device. On the CPU the same code reads nothing once ``ferfast.ops.value_checks(False)`` turns off
the CPU-only value checks, which is how these tests stand in for the device path: every Python-level
read (``item``, ``__float__``, ``__int__``, ``__bool__``, ``__index__``, ``tolist``, ``nonzero``,
``numpy``) is counted and must be zero. With a GPU, the same step runs under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

import ferfast
from ferfast.ops import value_checks
from tests.utils import BACKENDS, backend_device

READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "nonzero", "numpy")
ALL_BACKENDS = [pytest.param("reference", id="reference"), *BACKENDS]


@contextlib.contextmanager
def count_host_reads() -> Iterator[Counter]:
    """Counts calls of the tensor methods that copy values to the host, while the block runs."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name, original):
        def method(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_counter_sees_reads():
    """The counter itself works (else a zero count proves nothing)."""
    t = torch.ones(3)
    with count_host_reads() as reads:
        t.sum().item()
        float(t[0])
        bool(t.all())
        t.tolist()
        t.nonzero()
    assert reads == Counter({"item": 1, "__float__": 1, "__bool__": 1, "tolist": 1, "nonzero": 1})


def stage1_batch(b: int, device: torch.device, k: int = 7) -> dict[str, torch.Tensor]:
    xy = torch.rand(b, 2) * 0.5
    boxes = torch.cat([xy, xy + 0.3], dim=1)
    boxes[1] = float("nan")  # an unknown face: the fallback box
    return {
        "images": torch.randn(b, 3, 16, 16, device=device),
        "labels": torch.randint(0, k, (b,), device=device),
        "boxes": boxes.to(device),
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mode": "elem", "pairing": "random"},
        {"mode": "pair", "prob": 0.5},
        {"ssfer_compat": True},
        {"with_originals": False},
    ],
    ids=["batch-flip", "elem-random", "pair", "ssfer_compat", "no-originals"],
)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_face_iou_mixup_step_reads_nothing(backend, kwargs, device):
    """Mixup draw, mix, soft targets, IoU, loss and backward: zero host reads with value checks off."""
    mixup = ferfast.FaceIoUMixup(num_classes=7, seed=0, backend=backend, **kwargs)
    head = torch.nn.Linear(3 * 16 * 16, 7).to(device)
    batch = stage1_batch(6, device)
    mixup(stage1_batch(6, device))  # a first call may cache (the fallback box)
    with value_checks(False), count_host_reads() as reads:
        for _ in range(2):
            out = mixup(batch)
            logits = head(out.images.flatten(1))
            if kwargs.get("with_originals") is False:
                loss = out.loss(logits, logits_real=head(batch["images"].flatten(1)))
            else:
                loss = out.loss(logits)
            loss.backward()
    assert not reads, f"host reads: {dict(reads)}"
    assert out.lam.device == out.perm.device == batch["images"].device  # built where the images are


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fused_ops_read_nothing(backend, device):
    """Every public fused op (forward and backward) with value checks off (``fused_head_masked_mse``: below)."""
    b, p, k = 2, 4, 5
    imgs = torch.randn(b, 3, 8, 8, device=device)
    perm = torch.tensor([1, 0], device=device)
    lam = torch.tensor(0.3, device=device)
    y = torch.tensor([0, 3], device=device)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.7]], device=device)
    with value_checks(False), count_host_reads() as reads:
        ids_keep, mask, ids_restore = ferfast.random_masking(torch.rand(b, 4, device=device), 0.5, backend=backend)
        patches = ferfast.patchify_gather(imgs.requires_grad_(), ids_keep, p, backend=backend)
        token = torch.zeros(1, 1, patches.shape[2], device=device, requires_grad=True)
        dec = ferfast.unshuffle_tokens(patches, token, ids_restore, 0, backend=backend)
        loss = ferfast.masked_patch_mse(imgs.detach(), dec, mask, p, True, backend=backend)
        loss.backward()
        ferfast.box_iou(boxes, boxes, backend=backend)
        iou = ferfast.paired_box_iou(boxes, perm, backend=backend)
        mixed = ferfast.face_mixup(imgs.detach().requires_grad_(), lam, perm, with_originals=True, backend=backend)
        mixed.sum().backward()
        soft = ferfast.mixup_soft_targets(y, k, lam, perm, 0.1, backend=backend)
        real, mix = torch.randn(b, k, device=device, requires_grad=True), torch.randn(b, k, device=device)
        ferfast.facemix_loss(real, mix.requires_grad_(), y, soft, iou, perm, backend=backend).backward()
        strong = torch.randn(b, k, device=device, requires_grad=True)
        ferfast.fixmatch_loss(torch.randn(b, k, device=device), strong, 0.5, backend=backend)[0].backward()
    assert not reads, f"host reads: {dict(reads)}"


def test_fused_head_reads_nothing_with_num_masked():
    """``fused_head_masked_mse`` finds the masked tokens with ``nonzero`` (one host read) unless ``num_masked``
    gives their count per row; then it reads nothing, and its loss and gradients are the same."""
    b, length, dim, p = 3, 16, 8, 2
    imgs = torch.randn(b, 3, 8, 8)
    _ids_keep, mask, _ids_restore = ferfast.random_masking(torch.rand(b, length), 0.75)
    h = torch.randn(b, length, dim, requires_grad=True)
    w = torch.randn(p * p * 3, dim, requires_grad=True)
    bias = torch.randn(p * p * 3, requires_grad=True)

    def run(**kwargs):
        loss = ferfast.fused_head_masked_mse(h, w, bias, imgs, mask, p, True, chunk_size=5, **kwargs)
        grads = torch.autograd.grad(loss, (h, w, bias))
        return loss, grads

    with value_checks(False), count_host_reads() as reads:
        loss_static, grads_static = run(num_masked=length - int(length * 0.25))
    assert not reads, f"host reads: {dict(reads)}"
    with value_checks(False), count_host_reads() as reads:
        loss_nonzero, grads_nonzero = run()
    assert reads["nonzero"] == 1
    torch.testing.assert_close(loss_static, loss_nonzero)
    for a, e in zip(grads_static, grads_nonzero):
        torch.testing.assert_close(a, e)
    with pytest.raises(ValueError, match="num_masked = 5"):
        run(num_masked=5)  # a wrong count is caught on CPU tensors while value checks are on
    with pytest.raises(ValueError, match="num_masked must be <= L"):
        run(num_masked=length + 1)


def test_value_checks_switch_is_what_turns_the_cpu_checks_off():
    """On CPU tensors the reference backend checks values by default, not under ``value_checks(False)``;
    ``validate=True`` checks either way."""
    x, perm = torch.randn(2, 3), torch.tensor([0, 5])
    with pytest.raises(ValueError, match="perm"):
        ferfast.face_mixup(x, 0.5, perm, backend="reference")
    with value_checks(False), count_host_reads() as reads:
        with pytest.raises(IndexError):  # unchecked: the gather itself fails
            ferfast.face_mixup(x, 0.5, perm, backend="reference")
    assert not reads
    with value_checks(False), pytest.raises(ValueError, match="perm"):
        ferfast.face_mixup(x, 0.5, perm, backend="reference", validate=True)
    assert ferfast.ops.set_value_checks(True) is True  # the context manager restored the default


def test_face_iou_mixup_copies_host_draws_without_blocking(monkeypatch):
    """``lam`` ([B] modes), a random pairing and the fallback box reach a CUDA device from pinned memory with
    ``non_blocking=True`` (recorded on CPU tensors standing in for the device copies)."""
    from ferfast.ops import face_iou_mixup

    copies = []
    real_to = torch.Tensor.to

    def fake_pin(self):
        copies.append("pin")
        return self

    def recording_to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            copies.append(("to", kwargs.get("non_blocking", False)))
            return real_to(self, "cpu")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    cuda = torch.device("cuda", 0)
    out = face_iou_mixup.host_to_device(torch.arange(3).numpy(), cuda)
    assert copies == ["pin", ("to", True)] and out.tolist() == [0, 1, 2]


@pytest.mark.cuda
def test_face_iou_mixup_step_does_not_synchronise_a_gpu():
    """On a GPU, the Mixup step and its loss under ``torch.cuda.set_sync_debug_mode("error")``."""
    device = backend_device("cuda") if torch.cuda.is_available() else pytest.skip("no CUDA GPU")
    mixup = ferfast.FaceIoUMixup(num_classes=7, seed=0, mode="elem", pairing="random")
    head = torch.nn.Linear(3 * 16 * 16, 7).to(device)
    batch = stage1_batch(8, device)
    mixup(batch)  # warm-up: pinned-memory pool, the fallback box's one-time copy, kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = mixup(batch)
        out.loss(head(out.images.flatten(1))).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def _bad_value_calls(device: torch.device) -> list[tuple[str, object]]:
    """Every public op that takes ``validate=``: a call with one bad value, and the argument its error names.

    The ops without it (``masked_patch_mse``, ``random_masking``, ``fixmatch_loss``) have no value to check:
    any mask weights, noise and logits are valid input.
    """
    imgs = torch.randn(2, 3, 8, 8, device=device)
    perm, bad_perm = torch.tensor([1, 0], device=device), torch.tensor([1, 2], device=device)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.7]], device=device)
    y, logits = torch.tensor([0, 3], device=device), torch.randn(2, 5, device=device)
    soft = torch.full((2, 5), 0.2, device=device)
    ids_keep = torch.tensor([[0, 4], [1, 2]], device=device)  # 4 patches of 4x4 in 8x8 images: 4 is outside
    ids_restore = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 9]], device=device)
    tokens, token = torch.randn(2, 3, 6, device=device), torch.zeros(6, device=device)
    h, w = torch.randn(2, 4, 5, device=device), torch.randn(48, 5, device=device)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]], device=device)  # 3 masked, not 2
    return [
        ("ids_keep", lambda **kw: ferfast.patchify_gather(imgs, ids_keep, 4, **kw)),
        ("ids_restore", lambda **kw: ferfast.unshuffle_tokens(tokens, token, ids_restore, 1, **kw)),
        ("boxes1", lambda **kw: ferfast.box_iou(boxes[:, [2, 3, 0, 1]], boxes, **kw)),
        ("perm", lambda **kw: ferfast.paired_box_iou(boxes, bad_perm, **kw)),
        ("perm", lambda **kw: ferfast.face_mixup(imgs, 0.5, bad_perm, **kw)),
        ("perm", lambda **kw: ferfast.mixup_soft_targets(y, 5, 0.5, bad_perm, 0.1, **kw)),
        (
            "iou",
            lambda **kw: ferfast.facemix_loss(logits, logits, y, soft, torch.tensor([0.5, 1.5]).to(device), perm, **kw),
        ),
        (
            "num_masked",
            lambda backend, **kw: ferfast.fused_head_masked_mse(h, w, None, imgs, mask, 4, num_masked=2, **kw),
        ),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_validate_option_checks_its_values(backend, device):
    """``validate=True`` raises a ValueError naming the argument on every backend, even with the CPU checks off;
    the default does so on CPU tensors. So a Triton or reference call catches what the C++ kernels catch."""
    for arg, call in _bad_value_calls(device):
        with value_checks(False), pytest.raises(ValueError, match=arg):
            call(backend=backend, validate=True)
        if device.type == "cpu":
            with pytest.raises(ValueError, match=arg):
                call(backend=backend)
