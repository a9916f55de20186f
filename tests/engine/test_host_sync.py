"""No host synchronisation in a training step: the steps of every stage's loop, counted for tensor-to-host reads.

A GPU run stalls wherever Python reads a tensor's value (the host waits for every queued kernel), and such a read
forbids capturing the step in a CUDA graph. On this CPU there is no queue to wait for, so the test counts the calls
that *would* synchronise on a GPU, while :func:`~ferfast.engine.fit` runs 5 steps with ``log_every=4`` of each
stage's real step (MAE pretraining, stage 1 with face-IoU Mixup, stage 2 FixMatch with the EMA teacher) on tiny
ViTs, with the fused AdamW, gradient clipping, the EMA and uint8 batches normalised by the prefetcher:

- :data:`TENSOR_READS`: ``Tensor.item``, ``tolist``, ``numpy``/``__array__``, ``__float__``, ``__int__``,
  ``__index__``, ``__bool__`` (``if t:``, ``bool(t)``), ``__complex__``, ``nonzero`` (data-dependent shape),
  ``cpu`` (a device-to-host copy on a GPU), ``equal``/``allclose`` (Python bools);
- :data:`TORCH_READS`: ``torch.nonzero``, ``torch.equal``, ``torch.allclose``, ``torch.is_nonzero``.

Reads are attributed to the step being run (from the step function's entry to the next one's, which includes the
loop's bookkeeping after the step and the prefetcher's work on the next batch); the epoch-end read is its own phase.
Steps 0, 1, 2 and 4 do not log and must read nothing; step 3 logs and reads (once).

Not observable this way: blocking host-to-device copies (``torch.tensor(..., device="cuda")``; on a CPU there is
no device to copy to) and data-dependent shapes computed inside C++ (boolean-mask indexing). The fullgraph compile
test (``test_compile_steps.py``) catches the latter; the CUDA test below runs the same loops under
``torch.cuda.set_sync_debug_mode("error")``, which catches all of them on a GPU.

The ops' Python value checks (``validate=None``) run on CPU tensors only, where they are cheap: the test switches
them off as they are on a GPU (``ferfast.ops._checks.values_checked``), so that it sees what a GPU run does.
"""

from __future__ import annotations

import collections
import traceback
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import ferfast.backends
import ferfast.ops._checks as op_checks
from ferfast.config import OptimConfig
from ferfast.engine import loop
from ferfast.engine.ema import ModelEma
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.optim import make_optimizer
from ferfast.engine.steps import StepOutput, pretrain_step, stage1_step, stage2_step
from ferfast.models import create_model
from ferfast.ops import FaceIoUMixup

TENSOR_READS = (
    "item",
    "tolist",
    "numpy",
    "__array__",
    "__float__",
    "__int__",
    "__index__",
    "__bool__",
    "__complex__",
    "nonzero",
    "cpu",
    "equal",
    "allclose",
)
TORCH_READS = ("nonzero", "equal", "allclose", "is_nonzero")
STEPS, LOG_EVERY, LOG_STEP = 5, 4, 3
SIZE, K = 16, 7
TINY_VIT = {"img_size": SIZE, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


class Reads:
    """Counts the host reads per phase (the step index, or ``"end"``), with where each one came from."""

    def __init__(self) -> None:
        self.phase: int | str | None = None
        self.calls: dict[int | str, list[str]] = collections.defaultdict(list)

    def record(self, name: str) -> None:
        if self.phase is None:
            return
        frames = [f for f in traceback.extract_stack()[:-2] if "test_host_sync" not in f.filename]
        where = next(
            (f"{f.filename}:{f.lineno} ({f.name})" for f in reversed(frames) if "/ferfast/" in f.filename),
            f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?",
        )
        self.calls[self.phase].append(f"{name} at {where}")

    def wrap(self, name: str, original: Callable) -> Callable:
        def counted(*args, **kwargs):
            self.record(name)
            return original(*args, **kwargs)

        return counted


class ListLoader:
    """A loader over fixed batches (uint8 images, as the ferfast loaders give), with ``set_epoch`` and ``len``."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.batches)


def uint8_images(b: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


def batches(stage: str, b: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        batch = {"images": uint8_images(b, g), "labels": torch.randint(0, K, (b,), generator=g)}
        if stage == "stage1":
            x0 = torch.rand(b, 2, generator=g) * 0.4
            batch["boxes"] = torch.cat([x0, x0 + 0.4], dim=1)
        if stage == "stage2":
            batch.update(images_weak=uint8_images(b, g), images_strong=uint8_images(b, g))
        out.append(batch)
    return out


def stage_parts(
    stage: str, device: str = "cpu"
) -> tuple[nn.Module, Callable[[nn.Module, dict], StepOutput], ModelEma | None]:
    """The model, the step (as the stage driver builds it) and the EMA of ``stage``, tiny, on ``device``."""
    torch.manual_seed(0)
    if stage == "pretrain":
        mae = create_model("mae_vit_demo", **TINY_VIT, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
        return mae.to(device), lambda m, b: pretrain_step(m, b, 0.75), None
    model = create_model("vit_demo", num_classes=K, **TINY_VIT).to(device)
    ema = ModelEma(model, 0.99)
    if stage == "stage1":
        mixup = FaceIoUMixup(K, seed=0)
        return model, lambda m, b: stage1_step(m, b, mixup), ema
    return model, lambda m, b: stage2_step(m, ema.module, b, threshold=0.0), ema


def run_counted(stage: str, tmp_path, monkeypatch, precision: str = "fp32") -> Reads:
    """Run one epoch of ``stage``'s loop with every read counted; returns the counts per phase."""
    model, step, ema = stage_parts(stage)
    opt, _ = make_optimizer(model, OptimConfig(lr=1e-3), 4)
    cfg = FitConfig(
        epochs=1,
        lr_at=lambda e: 1e-3,
        output_dir=tmp_path,
        log_every=LOG_EVERY,
        clip_grad=1.0,
        show_progress=False,
        precision=precision,
    )
    reads = Reads()
    step_index = iter(range(STEPS))

    def marked_step(m: nn.Module, b: dict) -> StepOutput:
        reads.phase = next(step_index)  # reads from here to the next step's entry are this step's
        return step(m, b)

    real_read = loop._DeviceStats.read

    def read_at(self):  # the loop reads its statistics: at log steps, and at the epoch's end (its own phase)
        if self.steps == STEPS:
            reads.phase = "end"
        else:
            reads.calls["read"].append(f"after step {reads.phase}")
        return real_read(self)

    monkeypatch.setattr(loop._DeviceStats, "read", read_at)
    monkeypatch.setattr(op_checks, "values_checked", lambda validate, *t, backend="reference": bool(validate))
    for name in TENSOR_READS:
        monkeypatch.setattr(torch.Tensor, name, reads.wrap(f"Tensor.{name}", getattr(torch.Tensor, name)))
    for name in TORCH_READS:
        monkeypatch.setattr(torch, name, reads.wrap(f"torch.{name}", getattr(torch, name)))
    try:
        fit(marked_step, model, opt, ListLoader(batches(stage)), cfg, ema=ema, stage=stage)
    finally:
        reads.phase = None
        monkeypatch.undo()
    return reads


def check_reads(reads: Reads) -> None:
    silent = [i for i in range(STEPS) if i != LOG_STEP]
    found = {i: reads.calls.get(i, []) for i in silent}
    assert all(not calls for calls in found.values()), "host reads on steps that do not log:\n" + "\n".join(
        f"  step {i}: {len(c)} reads, e.g. {sorted(set(c))[:6]}" for i, c in found.items() if c
    )
    assert reads.calls.get(LOG_STEP), "the logging step read nothing: the log record had no values"
    assert reads.calls.get("read") == [f"after step {LOG_STEP}"]  # one read of the statistics at the log step


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("stage", ["pretrain", "stage1", "stage2"])
def test_no_host_reads_on_steps_that_do_not_log(stage, backend, tmp_path, monkeypatch):
    """With the ops' default backend here (the C++ kernels when the native library is built) and with the
    reference ops (plain torch: the Python side of the ops that a GPU run shares)."""
    previous = ferfast.backends.default_backend()
    ferfast.backends.set_default_backend(backend)
    try:
        check_reads(run_counted(stage, tmp_path, monkeypatch))
    finally:
        ferfast.backends.set_default_backend(previous)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_and_the_grad_scaler_read_nothing_either(precision, tmp_path, monkeypatch):
    """bf16 autocast; fp16 with its GradScaler, which unscales, skips and rescales on the device with the fused
    AdamW (``_step_supports_amp_scaling``; an optimizer without it makes ``GradScaler.step`` call ``.item()``)."""
    check_reads(run_counted("stage1", tmp_path, monkeypatch, precision))


def test_the_counter_sees_a_read_in_a_step(tmp_path, monkeypatch):
    """The check can fail: a step that logs ``float(loss)`` (as ferfast's steps once did) reads on every step."""
    model, step, ema = stage_parts("stage2")

    def reading_step(m, b):
        out = step(m, b)
        return StepOutput(out.loss, {k: float(v) for k, v in out.stats.items()})

    monkeypatch.setattr("tests.engine.test_host_sync.stage_parts", lambda stage: (model, reading_step, ema))
    reads = run_counted("stage2", tmp_path, monkeypatch)
    assert all(any("Tensor.__float__" in c for c in reads.calls[i]) for i in range(STEPS))
    with pytest.raises(AssertionError, match="host reads on steps that do not log"):
        check_reads(reads)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stage", ["pretrain", "stage1", "stage2"])
def test_cuda_steps_do_not_synchronise(stage, tmp_path, monkeypatch):
    """On a GPU: the steps that do not log run under ``torch.cuda.set_sync_debug_mode("error")`` (the first one,
    which initialises cuBLAS and the allocator, and the logging ones excepted)."""
    model, step, ema = stage_parts(stage, "cuda")
    opt, _ = make_optimizer(model, OptimConfig(lr=1e-3), 4)
    cfg = FitConfig(
        epochs=1,
        lr_at=lambda e: 1e-3,
        output_dir=tmp_path,
        log_every=LOG_EVERY,
        clip_grad=1.0,
        show_progress=False,
        precision="bf16",
    )
    index = iter(range(STEPS))

    def guarded(m, b):
        i = next(index)
        torch.cuda.set_sync_debug_mode("error" if 0 < i < LOG_STEP else "default")
        return step(m, b)

    pinned = [{k: v.pin_memory() for k, v in b.items()} for b in batches(stage)]
    try:
        fit(guarded, model, opt, ListLoader(pinned), cfg, device="cuda", ema=ema, stage=stage)
    finally:
        torch.cuda.set_sync_debug_mode("default")
