"""Whole training steps on a GPU: images/s of SSFER's MAE pretraining and stage-1 steps, ferfast ops vs reference ops.

One timed call = one optimizer step as ``ferfast.engine``'s loop runs it: the engine's step function
(:func:`~ferfast.engine.steps.pretrain_step` / :func:`~ferfast.engine.steps.stage1_step`) under bf16 autocast,
``loss.backward()``, fused AdamW's ``step()`` and ``zero_grad(set_to_none=True)``. Weights, optimizer state and
inputs are fp32.

- ``train_step_pretrain``: MAE ViT-B/16 (MAE's 512/8/16 decoder), 224 x 224, mask ratio 0.75, norm-pix loss
  (SSFER's pretraining), batches of 64 and 128; the masking noise is drawn in the step (``torch.rand``), as in
  training. The ops: ``random_masking``, ``patchify_gather``, ``unshuffle_tokens``, ``masked_patch_mse``.
- ``train_step_stage1``: the ViT-B/16 classifier (global pool), face-IoU Mixup (:class:`~ferfast.ops.FaceIoUMixup`,
  SSFER's defaults) of a labeled batch of 32 with face boxes, one forward pass over ``[originals; mixed]``
  (64 images), SSFER's loss. The ops: ``paired_box_iou``, ``face_mixup``, ``mixup_soft_targets``, ``facemix_loss``.

Providers (the model and the transformer blocks are the same; only ferfast's ops differ):

- ``ferfast-auto``: ``backend="auto"`` (on a GPU: the Triton kernels, else the CUDA kernels);
- ``torch-ref``: ``backend="reference"``, the plain-PyTorch specification of every op (:mod:`ferfast.reference`);
- ``ferfast-auto+compile``: ``torch.compile`` of the model (``ferfast-auto`` ops; the Mixup and the optimizer stay
  eager). Off with ``--no-compile`` (gpu_check.sh runs without it: compiling ViT-B takes most of a minute).

``images_per_s`` counts the images of the batch (stage 1: the labeled images, not the 2B forward images);
``peak_mem_MiB`` is the step's peak allocation (weights, AdamW state and activations included). CUDA only: without
a GPU every case skips (``--quick``: the demo's small models on 64 x 64 images).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import shapes
from ferfast.backends import resolve_backend
from ferfast.engine.steps import autocast, pretrain_step, stage1_step
from ferfast.models import create_model
from ferfast.ops import FaceIoUMixup

AUTO, REF, AUTO_COMPILE = "ferfast-auto", "torch-ref", "ferfast-auto+compile"
PROVIDERS = (AUTO, REF, AUTO_COMPILE)
BACKEND = {AUTO: "auto", REF: "reference", AUTO_COMPILE: "auto"}
#: AdamW as MAE's pretraining (betas 0.9/0.95, weight decay 0.05); the learning rate does not change the time
LR = 1.5e-4


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    quick = bool(metafunc.config.getoption("quick"))
    for fixture in shapes.TRAIN_REGISTRIES:
        if fixture in metafunc.fixturenames:
            names = [s.name for s in shapes.selected_train_shapes(fixture, quick)]
            metafunc.parametrize(fixture, names, ids=names, indirect=True)
    if "train_provider" in metafunc.fixturenames:
        metafunc.parametrize("train_provider", PROVIDERS, ids=[f"{p}@cuda" for p in PROVIDERS], indirect=True)


@pytest.fixture
def pretrain_step_shape(request: pytest.FixtureRequest) -> shapes.TrainShape:
    return shapes.train_by_name("pretrain_step_shape", request.param)


@pytest.fixture
def stage1_step_shape(request: pytest.FixtureRequest) -> shapes.TrainShape:
    return shapes.train_by_name("stage1_step_shape", request.param)


@pytest.fixture
def train_provider(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> str:
    """The provider; skips without a GPU (before pytest-benchmark's fixture is set up)."""
    provider = request.param
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (the training-step benchmarks run on a GPU only)")
    if pytestconfig.getoption("cpu_only"):
        pytest.skip("--cpu-only")
    if provider == AUTO_COMPILE and pytestconfig.getoption("no_compile"):
        pytest.skip("torch.compile providers are off (--no-compile)")
    return provider


@pytest.fixture
def train_bench(train_provider, make_bench):
    return make_bench(torch.device("cuda"), train_provider)


# ---- the steps (they run on any device, and take model overrides: how their code path is checked on a CPU) ----


def _optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), weight_decay=0.05, fused=device.type == "cuda")


def _maybe_compile(model: torch.nn.Module, provider: str) -> torch.nn.Module:
    return torch.compile(model) if provider == AUTO_COMPILE else model


def build_pretrain_step(
    shape: shapes.TrainShape, device: torch.device, provider: str, **model_kwargs: Any
) -> tuple[Callable, tuple, dict[str, Any]]:
    """``(step, args, info)``: ``step(*args)`` runs one MAE pretraining step and returns the loss (a tensor)."""
    backend = BACKEND[provider]
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs (ViT-B's init is seconds on a CPU)
        mae = create_model(shape.model, img_size=shape.img_size, norm_pix_loss=True, backend=backend, **model_kwargs)
    opt = _optimizer(mae, device)
    net = _maybe_compile(mae, provider)
    batch = {"images": shapes.cls_images(shape.cls, device)}

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, shape.precision):
            out = pretrain_step(net, batch, mask_ratio=shape.mask_ratio)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    info = {"ops_backend": resolve_backend(device, backend), "mask_ratio": shape.mask_ratio, "norm_pix_loss": True}
    return step, (batch,), info


def build_stage1_step(
    shape: shapes.TrainShape, device: torch.device, provider: str, **model_kwargs: Any
) -> tuple[Callable, tuple, dict[str, Any]]:
    """``(step, args, info)``: ``step(*args)`` runs one stage-1 step (face-IoU Mixup) and returns the loss."""
    backend = BACKEND[provider]
    torch.manual_seed(0)
    with torch.device(device):
        vit = create_model(shape.model, img_size=shape.img_size, num_classes=shape.num_classes, **model_kwargs)
    opt = _optimizer(vit, device)
    net = _maybe_compile(vit, provider)
    mixup = FaceIoUMixup(shape.num_classes, seed=0, backend=backend)  # SSFER's alpha 1, label smoothing 0.1
    cls = shape.cls
    batch = {
        "images": shapes.cls_images(cls, device),
        "labels": shapes.cls_labels(cls, device),
        "boxes": shapes.face_boxes(cls, device),
    }

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, shape.precision):
            out = stage1_step(net, batch, mixup)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    info = {"ops_backend": resolve_backend(device, backend), "forward_images": 2 * shape.batch}
    return step, (batch,), info


def _run(bench, op: str, shape: shapes.TrainShape, built: tuple[Callable, tuple, dict[str, Any]]) -> None:
    step, args, info = built
    bench.run(
        op=op,
        mode="step",
        shape=shape,
        fn=step,
        args=args,
        nbytes=None,
        images=shape.batch,
        shape_desc=shape.describe(),
        extra_info={**info, "model": shape.model, "batch": shape.batch, "img_size": shape.img_size},
    )


@pytest.mark.benchmark(group="train_step_pretrain")
def test_train_step_pretrain(train_bench, pretrain_step_shape):
    t = train_bench.target
    built = build_pretrain_step(pretrain_step_shape, t.device, t.provider)
    _run(train_bench, "train_step_pretrain", pretrain_step_shape, built)


@pytest.mark.benchmark(group="train_step_stage1")
def test_train_step_stage1(train_bench, stage1_step_shape):
    t = train_bench.target
    built = build_stage1_step(stage1_step_shape, t.device, t.provider)
    _run(train_bench, "train_step_stage1", stage1_step_shape, built)
