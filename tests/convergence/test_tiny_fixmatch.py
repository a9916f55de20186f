"""Convergence of stage 2: FixMatch with an EMA teacher, run by :func:`ferfast.engine.fit`, must actually learn.

A tiny :class:`~ferfast.models.VisionTransformer` (32x32 images, 8x8 patches, width 32, depth 2) is trained from
scratch the way :func:`ferfast.engine.stages.run_stage2` trains SSFER's: :func:`ferfast.engine.steps.stage2_step`
(SSFER's threshold 0.7 and unlabeled weight 5, label smoothing 0.1) inside :func:`~ferfast.engine.fit`, whose
``ema`` is the :class:`~ferfast.engine.ema.ModelEma` teacher that the step reads, so fit's EMA update after every
optimizer step is what makes the teacher learn. The EMA decays 0.95 (SSFER: 0.999 over thousands of steps; here
there are 160).

The task is learnable by design and generated in the test: 7 classes, each a smooth random colour pattern
(a 4x4 grid of Gaussian values upsampled to 32x32); an image is its class's pattern plus per-pixel Gaussian noise
(std 1.5, above the pattern's own std 1, so that 4 labeled images a class do not make it trivial). 28 labeled
images, a pool of 224 unlabeled ones whose labels only the checks read, 224 held-out ones. Every batch is drawn
from (epoch, step) alone: 16 labeled and 48 unlabeled images; the labeled and weak views are shifted sideways by
up to 2 pixels plus noise (std 0.1); the strong view scales the brightness by U(0.5, 1.5), adds noise (std 0.5)
and cuts out a 12x12 square.

What is asserted, over 8 epochs of 20 steps (fit's epoch means of the step's statistics, and the scores of an
``evaluate`` callback after every epoch); measured values in brackets:

- the supervised loss goes down clearly: last epoch's mean ``loss_x`` <= 0.6x the first's [0.30x: 1.79 -> 0.54];
- the teacher becomes confident: the step's ``mask_rate`` (unlabeled images whose teacher pseudo-label has
  p >= 0.7) is at most 0.05 in epoch 1 [0.0] and at least 0.4 in the last [0.82], and the unlabeled loss is live
  in the last epoch (mean ``loss_u`` >= 0.02 [0.086]) and in the loss trained on: every epoch's mean ``loss``
  is ``loss_x + 5 * loss_u`` (relative 1e-4; a step that reported ``loss_u`` but dropped it from the loss fails);
- the student learns the pseudo-labels on the strong views: in the last epoch, ``loss_u / mask_rate`` (the mean
  cross-entropy over the confident images) is at most 0.2 [0.105; 0.33 when the unlabeled loss has no gradient,
  i.e. the student trains on the labeled images only];
- the pseudo-labels are right: on the whole unlabeled pool the teacher is confident for at least 40% [92%], and
  at least 50% of its confident pseudo-labels are the true class [95%; chance 1/7];
- the teacher generalises: at least 50% right on the held-out images [95%; 48% after epoch 1].

The control test trains the same way without giving fit the teacher (the EMA copy is never updated, as if fit
skipped its EMA step): the teacher stays at its random start, no pseudo-label passes the threshold, and the
checks fail.

The thresholds leave wide margins on purpose: the run is deterministic (fixed seeds, one intra-op thread), but the
test should pin "stage 2 learns", not one float path. It takes ~3 s a run on one CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferfast.engine.ema import ModelEma
from ferfast.engine.steps import StepOutput, stage2_step
from ferfast.models import VisionTransformer
from tests.convergence.test_tiny_pretrain import fit_quietly

NUM_CLASSES = 7
IMG_SIZE = 32


@dataclass(frozen=True)
class Stage2Config:
    labeled: int = 28  # 4 a class
    unlabeled: int = 224
    held_out: int = 224
    noise: float = 1.5  # std of an image's noise around its class pattern (the pattern's own std is ~1)
    batch: int = 16
    unlabeled_batch: int = 48
    steps_per_epoch: int = 20
    epochs: int = 8
    lr: float = 2e-3
    ema_decay: float = 0.95
    threshold: float = 0.7  # SSFER's
    unlabeled_weight: float = 5.0  # SSFER's
    label_smoothing: float = 0.1


STAGE2 = Stage2Config()

#: the checks (see the module docstring for the measured values)
LOSS_X_FACTOR = 0.6
FIRST_EPOCH_MAX_MASK_RATE = 0.05
LAST_EPOCH_MIN_MASK_RATE = 0.4
LAST_EPOCH_MIN_LOSS_U = 0.02
MAX_CONFIDENT_CE = 0.2
POOL_MIN_MASK_RATE = 0.4
MIN_PSEUDO_LABEL_ACCURACY = 0.5
MIN_TEACHER_ACCURACY = 0.5


# ---- data ----------------------------------------------------------------------------------------------------


def class_patterns(seed: int = 0) -> Tensor:
    """``[K, 3, 32, 32]`` smooth random patterns, one a class."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(NUM_CLASSES, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)


def noisy_images(patterns: Tensor, num: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
    """``num`` images (every class equally often, shuffled) and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num) % NUM_CLASSES)[torch.randperm(num, generator=g)]
    return patterns[labels] + noise * torch.randn(num, 3, IMG_SIZE, IMG_SIZE, generator=g), labels


def weak_view(x: Tensor, g: torch.Generator) -> Tensor:
    shift = int(torch.randint(-2, 3, (), generator=g))
    return torch.roll(x, shift, dims=3) + 0.1 * torch.randn(x.shape, generator=g)


def strong_view(x: Tensor, g: torch.Generator) -> Tensor:
    n = x.shape[0]
    brightness = torch.empty(n, 1, 1, 1).uniform_(0.5, 1.5, generator=g)
    x = x * brightness + 0.5 * torch.randn(x.shape, generator=g)
    corners = torch.randint(0, IMG_SIZE - 12, (n, 2), generator=g).tolist()
    for i, (r, c) in enumerate(corners):
        x[i, :, r : r + 12, c : c + 12] = 0
    return x


class FixMatchBatches:
    """Stage 2's batches for :func:`ferfast.engine.fit`: labeled images (weak view) and labels, the unlabeled
    images' weak and strong views; float images, already normalised. Each batch depends on (epoch, step) only."""

    def __init__(self, cfg: Stage2Config, labeled: tuple[Tensor, Tensor], unlabeled: Tensor) -> None:
        self.cfg, self.labeled, self.unlabeled = cfg, labeled, unlabeled
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __len__(self) -> int:
        return self.cfg.steps_per_epoch

    def __iter__(self):
        (x, y), pool, cfg = self.labeled, self.unlabeled, self.cfg
        for step in range(self.start, cfg.steps_per_epoch):
            g = torch.Generator().manual_seed(10_000 + 1_000 * self.epoch + step)
            rows = torch.randint(0, len(x), (cfg.batch,), generator=g)
            u = pool[torch.randint(0, len(pool), (cfg.unlabeled_batch,), generator=g)]
            yield {
                "images": weak_view(x[rows], g),
                "labels": y[rows],
                "images_weak": weak_view(u, g),
                "images_strong": strong_view(u, g),
            }


# ---- training ------------------------------------------------------------------------------------------------


@dataclass
class Stage2Run:
    history: list[dict[str, float]]  # fit's records, one an epoch
    student: nn.Module
    teacher: ModelEma


def train_stage2(cfg: Stage2Config, update_teacher: bool = True) -> Stage2Run:
    """Stage 2 from scratch through :func:`ferfast.engine.fit`; ``update_teacher=False`` (the control) does not hand
    fit the EMA teacher, which then never moves."""
    patterns = class_patterns(seed=0)
    labeled = noisy_images(patterns, cfg.labeled, cfg.noise, seed=1)
    pool, pool_labels = noisy_images(patterns, cfg.unlabeled, cfg.noise, seed=2)
    held_out, held_out_labels = noisy_images(patterns, cfg.held_out, cfg.noise, seed=3)

    torch.manual_seed(0)
    student = VisionTransformer(
        img_size=IMG_SIZE, patch_size=8, num_classes=NUM_CLASSES, embed_dim=32, depth=2, num_heads=4
    )
    teacher = ModelEma(student, cfg.ema_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.05)

    def step(model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
        return stage2_step(
            model,
            teacher.module,
            batch,
            threshold=cfg.threshold,
            unlabeled_weight=cfg.unlabeled_weight,
            label_smoothing=cfg.label_smoothing,
        )

    def evaluate(epoch: int) -> dict[str, float]:
        """The teacher on the whole unlabeled pool (its pseudo-labels, scored with the pool's hidden labels) and on
        the held-out images."""
        with torch.no_grad():
            confidence, pseudo = teacher.module(pool).softmax(dim=1).max(dim=1)
            held_out_pred = teacher.module(held_out).argmax(dim=1)
        confident = confidence >= cfg.threshold
        right = (pseudo == pool_labels) & confident
        return {
            "teacher_accuracy": float((held_out_pred == held_out_labels).float().mean()),
            "pool_mask_rate": float(confident.float().mean()),
            "pseudo_label_accuracy": float(right.sum()) / max(int(confident.sum()), 1),
        }

    history = fit_quietly(
        step,
        student,
        opt,
        FixMatchBatches(cfg, labeled, pool),
        epochs=cfg.epochs,
        lr=cfg.lr,
        ema=teacher if update_teacher else None,
        evaluate=evaluate,
        best_metric="teacher_accuracy",
    )
    assert len(history) == cfg.epochs
    return Stage2Run(history, student, teacher)


def convergence_failures(history: list[dict[str, float]], cfg: Stage2Config = STAGE2) -> list[str]:
    """The module docstring's checks that ``history`` fails, as report lines (empty: stage 2 converged)."""
    first, last = history[0], history[-1]
    bad = []
    if not last["loss_x"] <= LOSS_X_FACTOR * first["loss_x"]:
        bad.append(f"supervised loss: last epoch {last['loss_x']:.4f} > {LOSS_X_FACTOR} x first {first['loss_x']:.4f}")
    if not first["mask_rate"] <= FIRST_EPOCH_MAX_MASK_RATE:
        bad.append(f"mask rate in epoch 1: {first['mask_rate']:.3f} > {FIRST_EPOCH_MAX_MASK_RATE} (random teacher)")
    if not last["mask_rate"] >= LAST_EPOCH_MIN_MASK_RATE:
        bad.append(f"mask rate in the last epoch: {last['mask_rate']:.3f} < {LAST_EPOCH_MIN_MASK_RATE}")
    if not last["loss_u"] >= LAST_EPOCH_MIN_LOSS_U:
        bad.append(f"unlabeled loss in the last epoch: {last['loss_u']:.4f} < {LAST_EPOCH_MIN_LOSS_U}")
    confident_ce = last["loss_u"] / max(last["mask_rate"], 1e-6)
    if not confident_ce <= MAX_CONFIDENT_CE:
        bad.append(
            f"student's cross-entropy on the confident pseudo-labels (strong views, last epoch): "
            f"{confident_ce:.3f} > {MAX_CONFIDENT_CE}"
        )
    for r in history:
        combined = r["loss_x"] + cfg.unlabeled_weight * r["loss_u"]
        if not abs(r["loss"] - combined) <= 1e-4 * abs(combined):
            bad.append(f"epoch {int(r['epoch'])}: loss {r['loss']:.6f} is not loss_x + w * loss_u = {combined:.6f}")
    if not last["pool_mask_rate"] >= POOL_MIN_MASK_RATE:
        bad.append(f"teacher confident on {last['pool_mask_rate']:.3f} of the pool < {POOL_MIN_MASK_RATE}")
    if not last["pseudo_label_accuracy"] >= MIN_PSEUDO_LABEL_ACCURACY:
        bad.append(f"pseudo-label accuracy {last['pseudo_label_accuracy']:.3f} < {MIN_PSEUDO_LABEL_ACCURACY}")
    if not last["teacher_accuracy"] >= MIN_TEACHER_ACCURACY:
        bad.append(f"teacher accuracy on held-out images {last['teacher_accuracy']:.3f} < {MIN_TEACHER_ACCURACY}")
    return bad


def _table(history: list[dict[str, float]]) -> str:
    keys = ("loss_x", "loss_u", "mask_rate", "pool_mask_rate", "pseudo_label_accuracy", "teacher_accuracy")
    return "\n".join(f"  epoch {int(r['epoch'])}: " + ", ".join(f"{k} {r[k]:.3f}" for k in keys) for r in history)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny tensors on a busy machine (and the same float path on every machine)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---- tests ---------------------------------------------------------------------------------------------------


def test_tiny_stage2_fixmatch_converges():
    run = train_stage2(STAGE2)
    bad = convergence_failures(run.history)
    assert not bad, "stage 2 did not converge:\n" + "\n".join(bad) + "\n" + _table(run.history)


def test_stage2_checks_reject_a_teacher_that_never_learns():
    """Control: without fit's EMA updates the teacher stays random, no pseudo-label is confident, the checks fail."""
    run = train_stage2(STAGE2, update_teacher=False)
    bad = convergence_failures(run.history)
    assert any("mask rate in the last epoch" in line for line in bad), _table(run.history)
    assert any("teacher accuracy" in line for line in bad), _table(run.history)
