"""Whole training steps: images/s of SSFER's MAE pretraining, stage-1 and stage-2 steps, ferfast against SSFER's recipe.

One timed call = one optimizer step. ferfast's providers run it as ``ferfast.engine``'s loop does: the engine's
step function (:func:`~ferfast.engine.steps.pretrain_step` / :func:`~ferfast.engine.steps.stage1_step` /
:func:`~ferfast.engine.steps.stage2_step`) under bf16 autocast on a GPU (fp32 on a CPU), ``loss.backward()``,
AdamW's ``step()`` (fused on a GPU), ``zero_grad(set_to_none=True)``, and in stage 2 the EMA teacher's update
(:class:`~ferfast.engine.ema.ModelEma`). Weights, optimizer state and inputs are fp32.

- ``train_step_pretrain``: MAE ViT-B/16 (MAE's 512/8/16 decoder), 224 x 224, mask ratio 0.75, norm-pix loss
  (SSFER's pretraining). The ops: ``random_masking``, ``patchify_gather``, ``unshuffle_tokens``,
  ``masked_patch_mse``.
- ``train_step_stage1``: the ViT-B/16 classifier (global pool), face-IoU Mixup (:class:`~ferfast.ops.FaceIoUMixup`,
  SSFER's defaults) of a labeled batch with face boxes, one forward pass over ``[originals; mixed]`` (2B images),
  SSFER's loss. The ops: ``paired_box_iou``, ``face_mixup``, ``mixup_soft_targets``, ``facemix_loss``.
- ``train_step_stage2``: FixMatch, B labeled + B unlabeled images: the EMA teacher on the weak views, the student on
  ``[labeled; strong]``, CE + 5 x the confidence-masked CE (threshold 0.7). The op: ``fixmatch_loss``.

Providers:

- ``ssfer-recipe``: the step as SSFER's released code runs it (on the MAE/DeiT training engines it builds on):
  pretraining under fp16 autocast (``torch.autocast("cuda")``, a no-op on a CPU, as in the released code) with
  MAE's loss scaler (``NativeScalerWithGradNormCount``: ``GradScaler``, unscale, the gradient norm, step, update),
  ``loss.item()`` and ``torch.cuda.synchronize()`` every step, AdamW with MAE's weight-decay parameter groups
  (not fused). The MAE forward is ferfast's model with ``backend="reference"``: the same transformer blocks, with
  plain-PyTorch masking, patchify and loss (the ops of MAE's ``models_mae.py``). Stage 1 in fp32 with
  ``timm.data.Mixup`` (batch mode, alpha 1, label smoothing 0.1) on a copy of the batch, two forward passes
  (originals, then the mixed images), the IoU of each face box with its flip partner's in plain torch (SSFER's YOLO
  detector is left out, in its favour), ``loss = (mixed_loss.sum() + ((1 - iou) * (ce + ce.flip(0))).sum()) / N``.
  Stage 2 in fp32: the teacher (timm's ``ModelEmaV2``, a per-tensor update) on the weak views, the student on
  ``[labeled; strong]``, CE + 5 x masked CE.
- ``ferfast-auto``: ``backend="auto"`` (on a GPU: the Triton kernels, else the CUDA kernels; on a CPU the C++ ops);
- ``torch-ref``: ferfast's steps with ``backend="reference"``, the plain-PyTorch specification of every op;
- ``ferfast-auto+compile``: ``torch.compile`` of the model (``ferfast-auto`` ops; the Mixup and the optimizer stay
  eager). Off with ``--no-compile`` (gpu_check.sh runs without it: compiling ViT-B takes most of a minute).

The loaders are not part of the step (the batch is already on the device): this is the step-only comparison.

``images_per_s`` counts the images of the batch (stage 1: the labeled images, not the 2B forward images; stage 2:
the labeled plus the unlabeled ones); ``vs_ssfer_recipe`` is a provider's images/s over the SSFER recipe's
(measured first, in the same run). ``model_flops`` is one step's FLOPs (matmuls, convolutions, attention; counted
once per shape with ``torch.utils.flop_counter.FlopCounterMode`` on the SSFER recipe's step: on a GPU for every
shape, on a CPU for the small ones), ``model_TFLOP/s`` those FLOPs over the step's time and, on an H100/H200,
``mfu`` that over the GPU's dense bf16 peak. ``peak_mem_MiB`` (GPU) is the step's peak allocation.

On a CPU (no skip: the path cannot rot) the shapes are the demo's small models (``--quick``) and ViT-B/16 at batch 8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import shapes
from ferfast.backends import resolve_backend
from ferfast.engine.ema import ModelEma
from ferfast.engine.precision import cpu_bf16_units
from ferfast.engine.steps import autocast, pretrain_step, stage1_step, stage2_step
from ferfast.models import create_model
from ferfast.ops import FaceIoUMixup

SSFER, AUTO, REF, AUTO_COMPILE = "ssfer-recipe", "ferfast-auto", "torch-ref", "ferfast-auto+compile"
#: ferfast's step in bf16 on a CPU with native bf16 matrix units (what ``run.precision="auto"`` may pick there)
AUTO_BF16_CPU = "ferfast-auto+bf16"
#: the SSFER recipe first: the others' ``vs_ssfer_recipe`` needs its images/s
PROVIDERS = (SSFER, AUTO, AUTO_BF16_CPU, REF, AUTO_COMPILE)
BACKEND = {SSFER: "reference", AUTO: "auto", AUTO_BF16_CPU: "auto", REF: "reference", AUTO_COMPILE: "auto"}
#: AdamW as MAE's pretraining (betas 0.9/0.95, weight decay 0.05); the learning rate does not change the time
LR = 1.5e-4
WEIGHT_DECAY = 0.05
#: stage 2 (SSFER): confidence threshold, weight of the unlabeled loss, EMA decay, label smoothing
THRESHOLD, UNLABELED_WEIGHT, EMA_DECAY, SMOOTHING = 0.7, 5.0, 0.999, 0.1
#: dense bf16 tensor-core peak, TFLOP/s (NVIDIA's data sheets), by a substring of the device name; first match wins
PEAK_BF16_TFLOPS = (("H200", 989.4), ("GH200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4))

#: (op, device, shape) -> the SSFER recipe's images/s, and -> one step's FLOPs
_SSFER_IPS: dict[tuple[str, str, str], float] = {}
_FLOPS: dict[tuple[str, str, str], int] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    quick = bool(config.getoption("quick"))
    devices = [d for d, off in (("cuda", "cpu_only"), ("cpu", "gpu_only")) if not config.getoption(off)]
    for fixture in shapes.TRAIN_REGISTRIES:
        if fixture not in metafunc.fixturenames:
            continue
        params, ids = [], []
        for device in devices:
            for shape in shapes.selected_train_shapes(fixture, quick, device):
                for provider in PROVIDERS:
                    params.append(((device, provider), shape.name))
                    ids.append(f"{provider}@{device}-{shape.name}")
        metafunc.parametrize(("train_target", fixture), params, ids=ids, indirect=True)


def _shape_fixture(request: pytest.FixtureRequest, fixture: str) -> shapes.TrainShape:
    return shapes.train_by_name(fixture, request.param)


@pytest.fixture
def pretrain_step_shape(request: pytest.FixtureRequest) -> shapes.TrainShape:
    return _shape_fixture(request, "pretrain_step_shape")


@pytest.fixture
def stage1_step_shape(request: pytest.FixtureRequest) -> shapes.TrainShape:
    return _shape_fixture(request, "stage1_step_shape")


@pytest.fixture
def stage2_step_shape(request: pytest.FixtureRequest) -> shapes.TrainShape:
    return _shape_fixture(request, "stage2_step_shape")


@pytest.fixture
def train_target(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> tuple[torch.device, str]:
    """``(device, provider)``; skips a GPU case without a GPU (before pytest-benchmark's fixture is set up)."""
    device, provider = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    if provider == AUTO_COMPILE and pytestconfig.getoption("no_compile"):
        pytest.skip("torch.compile providers are off (--no-compile)")
    if provider == AUTO_BF16_CPU:
        if device == "cuda":
            pytest.skip("on a GPU ferfast-auto already runs in bf16")
        if cpu_bf16_units() is None:
            pytest.skip("this CPU has no native bf16 matrix units (AMX-BF16 / AVX512-BF16)")
    return torch.device(device), provider


@pytest.fixture
def train_bench(train_target: tuple[torch.device, str], make_bench: Callable) -> Any:
    return make_bench(*train_target)


# ---- shared pieces -------------------------------------------------------------------------------------------


def precision_of(shape: shapes.TrainShape, device: torch.device, provider: str) -> str:
    """The step's autocast: the SSFER recipe's own (fp16 pretraining, fp32 fine-tuning) on a GPU, the shape's
    (bf16) for ferfast on a GPU, fp32 on a CPU (where SSFER's ``torch.autocast("cuda")`` does nothing)."""
    if device.type != "cuda":
        return "bf16" if provider == AUTO_BF16_CPU else "fp32"
    if provider == SSFER:
        return "fp16" if shape.model.startswith("mae_") else "fp32"
    return shape.precision


def _optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY, fused=fused)


def _ssfer_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """MAE's ``optim_factory.add_weight_decay`` groups (no decay on biases and 1-d weights), unfused AdamW."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": WEIGHT_DECAY}]
    return torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95))


class NativeScalerWithGradNormCount:
    """MAE's loss scaler (``util/misc.py``): scaled backward, unscale, the gradients' norm, step, update.

    Its ``GradScaler`` is disabled off CUDA, as ``torch.cuda.amp.GradScaler()`` is on a machine without a GPU."""

    def __init__(self, device: torch.device) -> None:
        self._scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: list) -> torch.Tensor:
        self._scaler.scale(loss).backward()
        self._scaler.unscale_(optimizer)
        grads = [p.grad.detach() for p in parameters if p.grad is not None]
        norm = torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)  # MAE's get_grad_norm_
        self._scaler.step(optimizer)
        self._scaler.update()
        return norm


def _ssfer_sync(loss: torch.Tensor, device: torch.device) -> float:
    """The released loops' per-step ``loss.item()`` (with its finiteness check) and ``torch.cuda.synchronize()``."""
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(f"Loss is {value}, stopping training")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value


def _maybe_compile(model: torch.nn.Module, provider: str) -> torch.nn.Module:
    return torch.compile(model) if provider == AUTO_COMPILE else model


def _build(make: Callable[[], torch.nn.Module], device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs (ViT-B's init is seconds on a CPU)
        return make()


def paired_iou_torch(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of each ``[B, 4]`` xyxy box with its flip partner's (``boxes.flip(0)``), in plain torch."""
    other = boxes.flip(0)
    lt = torch.maximum(boxes[:, :2], other[:, :2])
    rb = torch.minimum(boxes[:, 2:], other[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    return inter / (area + area.flip(0) - inter)


# ---- the steps (they run on any device, and take model overrides: how their code path is checked on a CPU) ----

Built = tuple[Callable, tuple, dict[str, Any]]


def build_pretrain_step(shape: shapes.TrainShape, device: torch.device, provider: str, **model_kwargs: Any) -> Built:
    """``(step, args, info)``: ``step(*args)`` runs one MAE pretraining step and returns the loss (a tensor)."""
    backend = BACKEND[provider]
    precision = precision_of(shape, device, provider)
    mae = _build(
        lambda: create_model(shape.model, img_size=shape.img_size, norm_pix_loss=True, backend=backend, **model_kwargs),
        device,
    )
    batch = {"images": shapes.cls_images(shape.cls, device)}
    info: dict[str, Any] = {
        "ops_backend": resolve_backend(device, backend),
        "mask_ratio": shape.mask_ratio,
        "norm_pix_loss": True,
        "precision": precision,
    }

    if provider == SSFER:
        opt = _ssfer_optimizer(mae)
        scaler = NativeScalerWithGradNormCount(device)
        params = list(mae.parameters())

        def ssfer_step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                loss, _pred, _mask = mae(batch["images"], mask_ratio=shape.mask_ratio)
            _ssfer_sync(loss, device)
            scaler(loss, opt, params)
            opt.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return loss.detach()

        info["recipe"] = "fp16 autocast + MAE's NativeScaler, loss.item() + synchronize per step, reference ops"
        return ssfer_step, (batch,), info

    opt = _optimizer(mae, device)
    net = _maybe_compile(mae, provider)

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, precision):
            out = pretrain_step(net, batch, mask_ratio=shape.mask_ratio)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    return step, (batch,), info


def _classifier_setup(
    shape: shapes.TrainShape, device: torch.device, provider: str, model_kwargs: dict[str, Any]
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """What the stage-1 and stage-2 builders share: the classifier, a labeled batch, the ops backend and precision."""
    model = _build(
        lambda: create_model(shape.model, img_size=shape.img_size, num_classes=shape.num_classes, **model_kwargs),
        device,
    )
    batch = {"images": shapes.cls_images(shape.cls, device), "labels": shapes.cls_labels(shape.cls, device)}
    info: dict[str, Any] = {
        "ops_backend": resolve_backend(device, BACKEND[provider]),
        "precision": precision_of(shape, device, provider),
    }
    return model, batch, info


def build_stage1_step(shape: shapes.TrainShape, device: torch.device, provider: str, **model_kwargs: Any) -> Built:
    """``(step, args, info)``: ``step(*args)`` runs one stage-1 step (face-IoU Mixup) and returns the loss."""
    vit, batch, info = _classifier_setup(shape, device, provider, model_kwargs)
    backend, precision = BACKEND[provider], info["precision"]
    batch["boxes"] = shapes.face_boxes(shape.cls, device)
    info["forward_images"] = 2 * shape.batch

    if provider == SSFER:
        from timm.data import Mixup  # SSFER's Mixup; timm is a dev/bench dependency

        mixup_fn = Mixup(
            mixup_alpha=1.0,
            cutmix_alpha=0.0,
            prob=1.0,
            mode="batch",
            label_smoothing=SMOOTHING,
            num_classes=shape.num_classes,
        )
        opt = _ssfer_optimizer(vit)

        def ssfer_step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            x, y = batch["images"], batch["labels"]
            logits_orig = vit(x)
            mixed, targets = mixup_fn(x.clone(), y)  # timm mixes in place; the originals' activations are saved
            logits_mixed = vit(mixed)
            mixed_loss = torch.sum(-targets * F.log_softmax(logits_mixed, dim=-1), dim=-1)  # SoftTargetCE, per image
            ce = F.cross_entropy(logits_orig, y, reduction="none")
            iou = paired_iou_torch(batch["boxes"])
            loss = (mixed_loss.sum() + ((1 - iou) * (ce + ce.flip(0))).sum()) / x.shape[0]
            _ssfer_sync(loss, device)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return loss.detach()

        info["recipe"] = "fp32, timm Mixup, two forward passes, torch IoU, loss.item() + synchronize per step"
        return ssfer_step, (batch,), info

    opt = _optimizer(vit, device)
    net = _maybe_compile(vit, provider)
    mixup = FaceIoUMixup(shape.num_classes, seed=0, backend=backend)  # SSFER's alpha 1, label smoothing 0.1

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, precision):
            out = stage1_step(net, batch, mixup)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    return step, (batch,), info


def build_stage2_step(shape: shapes.TrainShape, device: torch.device, provider: str, **model_kwargs: Any) -> Built:
    """``(step, args, info)``: ``step(*args)`` runs one stage-2 (FixMatch) step, EMA update included."""
    student, batch, info = _classifier_setup(shape, device, provider, model_kwargs)
    precision = info["precision"]
    batch["images_weak"] = shapes.cls_images(shape.cls, device).flip(0).contiguous()
    batch["images_strong"] = shapes.cls_images(shape.cls, device).flip(2).contiguous()
    info.update(forward_images=3 * shape.batch, unlabeled=shape.batch)

    if provider == SSFER:
        from timm.utils import ModelEmaV2

        teacher = ModelEmaV2(student, decay=EMA_DECAY)
        opt = _ssfer_optimizer(student)

        def ssfer_step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            x, y = batch["images"], batch["labels"]
            n = x.shape[0]
            with torch.no_grad():
                probs = torch.softmax(teacher.module(batch["images_weak"]), dim=-1)
            max_probs, pseudo = probs.max(dim=-1)
            mask = max_probs.ge(THRESHOLD).float()
            logits = student(torch.cat([x, batch["images_strong"]]))
            loss_x = F.cross_entropy(logits[:n], y, label_smoothing=SMOOTHING)
            loss_u = (F.cross_entropy(logits[n:], pseudo, reduction="none") * mask).mean()
            loss = loss_x + UNLABELED_WEIGHT * loss_u
            _ssfer_sync(loss, device)
            loss.backward()
            opt.step()
            opt.zero_grad()
            teacher.update(student)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return loss.detach()

        info["recipe"] = "fp32, teacher (timm ModelEmaV2) on weak, student on [labeled; strong], CE + 5 masked CE"
        return ssfer_step, (batch,), info

    teacher_ema = ModelEma(student, EMA_DECAY)
    opt = _optimizer(student, device)
    net = _maybe_compile(student, provider)
    # the teacher's forward runs eagerly in every provider: compiling it too would double the compile time
    teacher_net = teacher_ema.module

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, precision):
            out = stage2_step(
                net,
                teacher_net,
                batch,
                threshold=THRESHOLD,
                unlabeled_weight=UNLABELED_WEIGHT,
                label_smoothing=SMOOTHING,
            )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        teacher_ema.update(student)
        return out.loss.detach()

    return step, (batch,), info


BUILDERS = {
    "train_step_pretrain": build_pretrain_step,
    "train_step_stage1": build_stage1_step,
    "train_step_stage2": build_stage2_step,
}


# ---- FLOPs and utilisation -----------------------------------------------------------------------------------


def peak_bf16_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s from :data:`PEAK_BF16_TFLOPS`, or None (a CPU, another GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def count_flops(step: Callable, args: tuple) -> int:
    """FLOPs of one call of ``step`` (it runs once, a warm-up as good as any), by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(*args)
    return int(counter.get_total_flops())


def _images(op: str, shape: shapes.TrainShape) -> int:
    return 2 * shape.batch if op == "train_step_stage2" else shape.batch


def _run(bench: Any, op: str, shape: shapes.TrainShape) -> None:
    t = bench.target
    step, args, info = BUILDERS[op](shape, t.device, t.provider)
    key = (op, t.device.type, shape.name)
    if key not in _FLOPS and (t.device.type == "cuda" or shape.quick):
        _FLOPS[key] = count_flops(step, args)
    images = _images(op, shape)
    extra = {
        **info,
        "model": shape.model,
        "batch": shape.batch,
        "img_size": shape.img_size,
        "dtype": f"{info['precision']}, fp32 weights and inputs",
    }
    if key in _FLOPS:  # known before the timing, so that the --bench-jsonl record has them too
        extra["model_flops"] = _FLOPS[key]
        if peak := peak_bf16_flops(t.device):
            extra["peak_bf16_TFLOP/s"] = peak / 1e12
    bench.run(
        op=op,
        mode="step",
        shape=shape,
        fn=step,
        args=args,
        nbytes=None,
        images=images,
        shape_desc=shape.describe(),
        extra_info=extra,
    )
    _derived_metrics(bench, key, images)


def _derived_metrics(bench: Any, key: tuple[str, str, str], images: int) -> None:
    """images/s vs the SSFER recipe's, the step's FLOP rate and (on an H100/H200) its utilisation of bf16 peak."""
    extra = bench.benchmark.extra_info
    ips = extra.get("gpu_event_images_per_s") or extra.get("images_per_s")
    if ips is None:  # --benchmark-disable: nothing was timed
        return
    if bench.target.provider == SSFER:
        _SSFER_IPS[key] = ips
    elif key in _SSFER_IPS:
        extra["ssfer_recipe_images_per_s"] = _SSFER_IPS[key]
        extra["vs_ssfer_recipe"] = ips / _SSFER_IPS[key]
    flops = _FLOPS.get(key)
    if flops:
        step_s = images / ips
        extra["model_TFLOP/s"] = flops / step_s / 1e12
        if peak := extra.get("peak_bf16_TFLOP/s"):
            extra["mfu"] = flops / step_s / (peak * 1e12)


@pytest.mark.benchmark(group="train_step_pretrain")
def test_train_step_pretrain(train_bench, pretrain_step_shape):
    _run(train_bench, "train_step_pretrain", pretrain_step_shape)


@pytest.mark.benchmark(group="train_step_stage1")
def test_train_step_stage1(train_bench, stage1_step_shape):
    _run(train_bench, "train_step_stage1", stage1_step_shape)


@pytest.mark.benchmark(group="train_step_stage2")
def test_train_step_stage2(train_bench, stage2_step_shape):
    _run(train_bench, "train_step_stage2", stage2_step_shape)
