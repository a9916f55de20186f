"""``fit`` trains (issue 14, point 0): pinned against the task and against a hand-written loop, not only against
itself.

The other engine tests compare ``fit`` with ``fit`` (resume, compile, DDP): a ``fit`` that stopped zeroing the
gradients, climbed the gradient or forgot to clip would pass them all. Here:

- ``fit`` learns a small, well-separated synthetic task to a clear threshold (training and held-out accuracy, and
  the loss falling by far more than a broken loop manages);
- ``fit``'s weights, EMA weights and learning rates equal those of a literal transcription of MAE's
  ``engine_pretrain.train_one_epoch`` (the per-iteration learning rate at the start of each accumulation group,
  ``loss / accum_iter``, clipping, ``optimizer.step()``, zeroing, then the EMA update) written out in this file, to
  fp32 tolerance; a hand loop that does not zero the gradients gives other weights (the comparison can fail);
- the rollback policy's give-up paths that ``test_rollback.py`` leaves open: a damaged ``checkpoint-last.pth`` at
  rollback time (falls back to the numbered one), every checkpoint damaged (a clear error), ``max_rollbacks=0``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import NonFiniteLossError
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.optim import cosine_with_warmup
from ferfast.engine.steps import StepOutput

SHAPE = (3, 8, 8)  # image-like [B, C, H, W] float tensors: the prefetcher passes them through as fp32
CLASSES = 4


class TensorLoader:
    """The loader protocol fit needs: ``set_epoch(epoch, start_step=0)``, ``len()``, batch dicts; the order of each
    epoch depends only on (seed, epoch), so :meth:`batches` gives a hand loop the very batches fit sees."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.epoch = self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size  # drop_last

    def batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(1000 * self.seed + epoch))
        out = []
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            out.append({"images": self.images[idx].clone(), "labels": self.labels[idx].clone(), "index": idx})
        return out

    def __iter__(self):
        yield from self.batches(self.epoch)[self.start_step :]


def blobs(n: int, seed: int, noise: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images: one fixed random prototype per class (the same for every seed) plus Gaussian noise."""
    protos = torch.randn(CLASSES, *SHAPE, generator=torch.Generator().manual_seed(12345))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    images = protos[labels] + noise * torch.randn(n, *SHAPE, generator=g)
    return images, labels


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    dim = math.prod(SHAPE)
    return nn.Sequential(nn.Flatten(), nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, CLASSES))


def ce_step(model: nn.Module, batch) -> StepOutput:
    loss = F.cross_entropy(model(batch["images"]), batch["labels"])
    return StepOutput(loss, {"loss": loss.detach()})


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------------------- 1. fit learns


def test_fit_learns_a_separable_task(tmp_path):
    """4 classes, 256 noisy training images (noise std 3 around each class's prototype: separable, but not so
    easily that a broken loop gets there anyway), 4 epochs of 8 steps, SGD with momentum, warmup + cosine.

    Measured (CPU, fp32): accuracy 0.18 before, 1.0 (training) and 0.984 (held out) after; the epochs' mean loss
    1.14 -> 6e-4 (ratio 5e-4). With ``Optimizer.zero_grad`` made a no-op the same run ends at held-out accuracy 0.90
    and a last-epoch loss of 20.7 (11.5x the first epoch's); climbing the gradient, at training accuracy 0.24 and
    a loss of 1.6e8.
    """
    images, labels = blobs(256, seed=1, noise=3.0)
    test_images, test_labels = blobs(256, seed=2, noise=3.0)
    model = mlp()
    initial = accuracy(model, images, labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    cfg = FitConfig(
        epochs=4,
        lr_at=lambda e: cosine_with_warmup(e, 4, 0.5, 0.05),
        output_dir=tmp_path,
        show_progress=False,
        log_every=0,
        keep=0,
    )
    hist = fit(ce_step, model, opt, TensorLoader(images, labels, batch_size=32), cfg)
    assert [r["epoch"] for r in hist] == [1.0, 2.0, 3.0, 4.0]
    assert initial < 0.5  # the task is not solved before training
    losses = [r["loss"] for r in hist]
    assert losses[-1] < 0.2 * losses[0] and losses[-1] < 0.1, losses
    assert accuracy(model, images, labels) >= 0.95
    assert accuracy(model, test_images, test_labels) >= 0.95


# ---------------------------------------------------------------------- 2. fit equals a hand-written loop

ACCUM, CLIP, EMA_DECAY, EPOCHS = 2, 0.4, 0.3, 2  # EMA decay 0.3: under warmup, updates 0-2 warm up, 3-5 are capped
#: peak learning rates that move the weights visibly in 6 steps while every gradient norm stays above CLIP
PEAK_LR = {"sgd": 0.5, "adamw": 0.01}


def two_group_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    """The first layer in a group with ``lr_scale`` 0.5 (layer-wise decay's field), the rest in a plain group."""
    groups = [{"params": list(model[1].parameters()), "lr_scale": 0.5}, {"params": list(model[3].parameters())}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9, weight_decay=1e-4)
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.05, foreach=False)


def equivalence_lr(kind: str):
    return lambda epoch: cosine_with_warmup(epoch, EPOCHS, 0.5, PEAK_LR[kind], min_lr=PEAK_LR[kind] / 50)


def hand_loop(model, opt, loader, lr_at, *, clip_grad, ema_warmup, zero_grad=True):
    """MAE's ``engine_pretrain.train_one_epoch``, written out, plus the clip of its ``engine_finetune``
    (``loss_scaler(..., clip_grad=max_norm)``) and an EMA update after every optimizer step (timm's ``ModelEma``).

    Per epoch: drop the gradients; for each batch ``i``: at an accumulation group's start set
    ``lr_at(epoch + i / steps)`` times the group's ``lr_scale`` on every param group; forward; backward of
    ``loss / ACCUM``; at a group's end (``(i + 1) % ACCUM == 0``; and, as fit does, at the epoch's last batch) clip
    the total gradient norm to ``clip_grad`` (when set), ``optimizer.step()``, drop the gradients and move the EMA:
    ``ema = d * ema + (1 - d) * w`` with ``d = min(decay, (1 + n) / (10 + n))`` for the n-th update under warmup,
    ``d = decay`` without. Gradients are dropped by hand (``p.grad = None``), not through ``optimizer.zero_grad``,
    so that a sabotaged ``zero_grad`` cannot make this loop and fit agree. Returns the EMA weights, each param
    group's last learning rate, and the pre-clip gradient norms."""
    ema = [p.detach().clone() for p in model.parameters()]
    updates, norms = 0, []
    model.train()

    def drop_grads():
        if zero_grad:
            for p in model.parameters():
                p.grad = None

    for epoch in range(EPOCHS):
        batches = loader.batches(epoch)
        steps = len(batches)
        drop_grads()
        for i, batch in enumerate(batches):
            if i % ACCUM == 0:
                lr = lr_at(epoch + i / steps)
                for group in opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = F.cross_entropy(model(batch["images"]), batch["labels"])
            (loss / ACCUM).backward()
            if (i + 1) % ACCUM == 0 or i + 1 == steps:
                if clip_grad is not None:
                    norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)))
                opt.step()
                drop_grads()
                decay = min(EMA_DECAY, (1.0 + updates) / (10.0 + updates)) if ema_warmup else EMA_DECAY
                with torch.no_grad():
                    for e, p in zip(ema, model.parameters()):
                        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
                updates += 1
    return torch.cat([e.flatten() for e in ema]), [g["lr"] for g in opt.param_groups], norms


def fit_and_hand_loop(tmp_path, kind, steps_per_epoch=6, ema_warmup=True, clip=CLIP, zero_grad=True):
    """The same model (init), optimizer settings and batches through fit and through :func:`hand_loop`."""
    images, labels = blobs(8 * steps_per_epoch, seed=3)
    loader = TensorLoader(images, labels, batch_size=8, seed=7)
    model = mlp(seed=4)
    hand_model = copy.deepcopy(model)
    opt, hand_opt = two_group_optimizer(model, kind), two_group_optimizer(hand_model, kind)
    ema = ModelEma(model, EMA_DECAY, warmup=ema_warmup)
    cfg = FitConfig(
        epochs=EPOCHS,
        lr_at=equivalence_lr(kind),
        output_dir=tmp_path,
        accum_steps=ACCUM,
        clip_grad=clip,
        show_progress=False,
        log_every=0,
        keep=0,
    )
    hist = fit(ce_step, model, opt, loader, cfg, ema=ema)
    hand = hand_loop(
        hand_model, hand_opt, loader, equivalence_lr(kind), clip_grad=clip, ema_warmup=ema_warmup, zero_grad=zero_grad
    )
    return (model, opt, ema, hist), (hand_model, *hand)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize(
    ("steps_per_epoch", "ema_warmup", "clip"), [(6, True, CLIP), (6, False, CLIP), (5, True, CLIP), (6, True, None)]
)
def test_fit_equals_a_hand_written_mae_loop(tmp_path, kind, steps_per_epoch, ema_warmup, clip):
    """2 epochs, accum_steps=2: 6 optimizer steps (6 batches per epoch, as MAE; or 5, where fit also steps the
    epoch's last, incomplete group, whose loss is still divided by accum_steps: MAE would drop that group).
    With clip_grad 0.4 every step clips (measured pre-clip norms 1.43-3.01; 0.87 at a 5-batch epoch's last, half
    group); without it, the loss's division by accum_steps is visible too (clipping to a fixed norm hides it for
    SGD, and AdamW is scale-invariant). Measured: fit and the hand loop give bit-identical weights (moved by
    0.03-0.7), the EMA weights differ by <= 6e-8 (``_foreach_lerp_`` vs mul/add)."""
    (model, opt, ema, hist), (hand_model, hand_ema, hand_lrs, norms) = fit_and_hand_loop(
        tmp_path, kind, steps_per_epoch, ema_warmup, clip
    )
    assert ema.num_updates == 6
    if clip is not None:
        assert len(norms) == 6 and min(norms) > clip, norms  # every step clipped: a fit that skips it cannot match
    assert (params(model) - params(mlp(seed=4))).abs().max() > 0.01  # it moved, by far more than the tolerance
    torch.testing.assert_close(params(model), params(hand_model), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params(ema.module), hand_ema, rtol=1e-5, atol=1e-6)
    # the last group's learning rate (set at its first batch), times lr_scale 0.5 on the first param group
    last_lr = equivalence_lr(kind)(EPOCHS - 1 + ACCUM * ((steps_per_epoch - 1) // ACCUM) / steps_per_epoch)
    assert hand_lrs == pytest.approx([0.5 * last_lr, last_lr], rel=1e-12)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(hand_lrs, rel=1e-12)
    assert hist[-1]["lr"] == pytest.approx(last_lr, rel=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_the_comparison_can_fail_a_loop_that_does_not_zero_the_gradients_differs(tmp_path, kind):
    """The control: the same hand loop without dropping the gradients ends far outside the tolerance above
    (measured: weights 0.011 (SGD) / 0.0075 (AdamW) apart, EMA 0.010 / 0.0073)."""
    (model, _, ema, _), (hand_model, hand_ema, _, _) = fit_and_hand_loop(tmp_path, kind, zero_grad=False)
    gap = (params(model) - params(hand_model)).abs().max().item()
    ema_gap = (params(ema.module) - hand_ema).abs().max().item()
    assert gap > 1e-3 and ema_gap > 1e-3, (gap, ema_gap)  # vs. 0 and ~1e-8 for the zeroing loop
    with pytest.raises(AssertionError):
        torch.testing.assert_close(params(model), params(hand_model), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- 3. rollback give-up paths


def rollback_fit(folder, step_fn, epochs=3, **cfg):
    images, labels = blobs(48, seed=5)
    model = mlp(seed=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    config = FitConfig(
        epochs=epochs,
        lr_at=lambda e: 0.01,
        output_dir=folder,
        show_progress=False,
        **{"nonfinite": "rollback", "log_every": 1, "keep": None, **cfg},
    )
    hist = fit(step_fn, model, opt, TensorLoader(images, labels, batch_size=8), config)
    return model, hist


def nan_once_at(call: int, before=None):
    """A CE step whose ``call``-th call (1-based) returns a NaN loss, after calling ``before()``."""
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        out = ce_step(model, batch)
        if calls["n"] == call:
            if before is not None:
                before()
            out = StepOutput(out.loss * float("nan"), {"loss": out.loss.detach() * float("nan")})
        return out

    return step


def damage(path):
    """Replace ``path`` by garbage without touching its hard-linked twin (the numbered checkpoint)."""
    path.unlink()
    path.write_bytes(b"not a checkpoint")


def test_a_damaged_last_checkpoint_at_rollback_time_falls_back_to_the_numbered_one(tmp_path):
    """6 steps per epoch: the NaN comes at global step 14 (epoch 3); checkpoint-last.pth is damaged just before."""
    step = nan_once_at(15, before=lambda: damage(tmp_path / "checkpoint-last.pth"))
    with pytest.warns(UserWarning) as caught:
        model, hist = rollback_fit(tmp_path, step)
    text = [str(w.message) for w in caught]
    assert any(
        "skipping damaged checkpoint" in t
        and "checkpoint-last.pth" in t
        and "rolling back from" in t
        and "checkpoint-2.pth instead" in t
        for t in text
    ), text
    assert any("rolling back to" in t and "checkpoint-2.pth (epoch 3, step 0)" in t for t in text), text
    assert [r["epoch"] for r in hist] == [1.0, 2.0, 3.0] and hist[-1]["lr_scale"] == 0.5
    assert all(math.isfinite(r["loss"]) for r in hist) and torch.isfinite(params(model)).all()


def test_every_checkpoint_damaged_at_rollback_time_is_a_clear_error(tmp_path):
    def damage_all():
        for path in tmp_path.glob("checkpoint*.pth"):
            damage(path)

    with pytest.raises(NonFiniteLossError, match=r"first at step 14\); cannot resume in .*: no checkpoint there loads"):
        rollback_fit(tmp_path, nan_once_at(15, before=damage_all))


def test_max_rollbacks_zero_gives_up_at_the_first_non_finite_loss(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"first at step 8\); gave up after 0 rollbacks"):
        rollback_fit(tmp_path, nan_once_at(9), max_rollbacks=0)
