"""Training steps fed by their loaders: ferfast's pipeline vs the SSFER recipe, JPEG files to optimizer step.

One timed round = ``STEPS`` optimizer steps of a stage, each on the next batch of a loader reading real JPEG
files, as a training run does (the loader's workers are started, and one batch drawn, before the timing):

- ``ssfer-recipe``: torchvision ``ImageFolder`` + SSFER's transforms (RandomResizedCrop(scale 0.2-1, bicubic) +
  flip + ToTensor + Normalize) in a ``DataLoader`` (``pin_memory`` on a GPU, ``.to(device, non_blocking=True)``),
  then the step of :mod:`bench_train_step`'s SSFER recipe (fp16 + MAE's loss scaler for pretraining; fp32,
  timm's Mixup and two forward passes for stage 1, its face boxes SSFER's fallback box since its detector is left
  out).
- ``ferfast``: :func:`ferfast.data.build_loader` (DALI when installed, else the torch loader; uint8 batches,
  pinned on a GPU) through :class:`~ferfast.engine.prefetch.DevicePrefetcher` (copied ahead, normalised on the
  device), then ferfast's step (``backend="auto"`` ops, bf16 autocast on a GPU, fp32 on a CPU).

Both read the same files with the same number of loader workers; the labels of stage 1 are the identity folders
modulo 7 on both sides. ``extra_info``: ``images_per_s`` and, for ferfast, ``vs_ssfer_recipe`` (measured first in
the same run). CPU: the demo's models on 64x64 faces (batch 32, the demo's); GPU: ViT-B/16 at 224 (MAE batch 64,
stage 1 batch 32) on 100x100 faces.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from bench_train_step import SSFER, build_pretrain_step, build_stage1_step
from torchvision import transforms as T

import shapes
from ferfast.data.augment import FACE_MEAN, FACE_STD, AugmentConfig
from ferfast.data.formats import FaceFolder
from ferfast.data.loaders import build_loader
from ferfast.engine.prefetch import DevicePrefetcher

FERFAST = "ferfast"
PROVIDERS = (SSFER, FERFAST)  # the SSFER recipe first: ferfast's ratio needs its images/s
NUM_CLASSES = 7
#: SSFER's fallback face box on 224^2, relative (its detector is left out of its step, in its favour)
FALLBACK_BOX = (25 / 224, 25 / 224, 220 / 224, 220 / 224)
_SSFER_IPS: dict[tuple[str, str], float] = {}


def _setting(device: str, quick: bool) -> dict[str, Any]:
    """Models, sizes and steps per round for a device (CPU: the demo's; GPU: ViT-B/16)."""
    if device == "cuda":
        return {
            "pretrain": ("mae_vit_base_patch16", 64),
            "stage1": ("vit_base_patch16", 32),
            "img": 224,
            "source": 100,
            "steps": 4 if quick else 10,
            "workers": min(8, len(os.sched_getaffinity(0))),
        }
    return {
        "pretrain": ("mae_vit_demo", 32),
        "stage1": ("vit_demo", 32),
        "img": 64,
        "source": 64,
        "steps": 3 if quick else 12,
        "workers": 2,
    }


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "loop_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    devices = [d for d, off in (("cuda", "cpu_only"), ("cpu", "gpu_only")) if not config.getoption(off)]
    cases = [(d, p) for d in devices for p in PROVIDERS]
    metafunc.parametrize("loop_case", cases, ids=[f"{p}@{d}" for d, p in cases], indirect=True)


@pytest.fixture
def loop_case(request: pytest.FixtureRequest) -> tuple[torch.device, str]:
    device, provider = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    return torch.device(device), provider


@pytest.fixture(scope="session")
def loop_faces(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[[int], Path]:
    """``faces(size)``: a folder tree ``root/<identity>/*.jpg`` of synthetic face JPEGs of that size (written once)."""
    from ferfast.data.synthetic import SyntheticFaceConfig, write_synthetic_dataset

    n = 256 if request.config.getoption("quick") else 1536
    written: dict[int, Path] = {}

    def faces(size: int) -> Path:
        if size not in written:
            root = tmp_path_factory.mktemp(f"loop_faces_{size}")
            write_synthetic_dataset(
                root,
                num_train=7,
                num_test=7,
                num_unlabeled=n,
                num_identities=max(14, n // 32),
                config=SyntheticFaceConfig(size=size),
            )
            written[size] = root / "unlabeled"
        return written[size]

    return faces


def _ssfer_batches(root: Path, stage: str, batch: int, img: int, workers: int, device: torch.device):
    """SSFER's input pipeline: ImageFolder + its transforms in a DataLoader, each batch moved to ``device``."""
    transform = T.Compose(
        [
            T.RandomResizedCrop(img, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(FACE_MEAN, FACE_STD),
        ]
    )
    folder = torchvision.datasets.ImageFolder(str(root), transform, target_transform=lambda c: c % NUM_CLASSES)
    loader = torch.utils.data.DataLoader(
        folder,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )
    box = torch.tensor(FALLBACK_BOX, device=device).expand(batch, 4)

    def batches():
        for _epoch in itertools.count():
            for x, y in loader:
                out = {"images": x.to(device, non_blocking=True)}
                if stage == "stage1":
                    out.update(labels=y.to(device, non_blocking=True), boxes=box)
                yield out

    return batches(), f"torchvision ImageFolder + SSFER's transforms, {workers} workers"


def _ferfast_batches(root: Path, stage: str, batch: int, img: int, workers: int, device: torch.device):
    """ferfast's input pipeline: build_loader (uint8, pinned on a GPU) through the engine's DevicePrefetcher."""
    ds = FaceFolder(root)
    if stage == "stage1":  # the identity folders serve as classes, as on SSFER's side
        ds.labels = (ds.identities % NUM_CLASSES).astype("int64")
    loader = build_loader(
        stage,
        ds,
        batch_size=batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        config=AugmentConfig(image_size=img),
    )
    feed = DevicePrefetcher(loader, device)

    def batches():
        for epoch in itertools.count():
            feed.set_epoch(epoch)
            yield from feed

    what = f"ferfast {loader.backend} loader"
    if getattr(loader, "fused", False):
        what += " + ferfast's DALI operators"
    return batches(), what


def _run(
    benchmark: Any,
    request: pytest.FixtureRequest,
    faces: Callable[[int], Path],
    device: torch.device,
    provider: str,
    stage: str,
) -> None:
    quick = bool(request.config.getoption("quick"))
    s = _setting(device.type, quick)
    model, batch = s[stage]
    img, steps = s["img"], s["steps"]
    shape = shapes.TrainShape(f"{model}-{img}-B{batch}", model, batch, img_size=img, devices=(device.type,))
    builder = build_pretrain_step if stage == "pretrain" else build_stage1_step
    step, _args, info = builder(shape, device, SSFER if provider == SSFER else "ferfast-auto")
    feeder = _ssfer_batches if provider == SSFER else _ferfast_batches
    batches, loader_desc = feeder(faces(s["source"]), stage, batch, img, s["workers"], device)
    step(next(batches))  # workers started, pipeline built, first step's one-off costs paid

    def steps_fed_by_the_loader() -> None:
        for _ in range(steps):
            step(next(batches))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rounds = request.config.getoption("bench_rounds") or (1 if quick else 3)
    benchmark.pedantic(steps_fed_by_the_loader, rounds=rounds, warmup_rounds=0 if quick else 1, iterations=1)
    ips = steps * batch / benchmark.stats.stats.median
    key = (stage, device.type)
    extra = benchmark.extra_info
    extra.update(
        op=f"train_loop_{stage}",
        provider=provider,
        device=device.type,
        model=model,
        batch=batch,
        shape=f"{shape.name}, {steps} steps a round (step ms = the round)",
        img_size=img,
        source_px=s["source"],
        steps_per_round=steps,
        loader_workers=s["workers"],
        precision=info["precision"],
        ops_backend=info["ops_backend"],
        loader=loader_desc,
        images_per_s=ips,
    )
    if provider == SSFER:
        _SSFER_IPS[key] = ips
    elif key in _SSFER_IPS:
        extra["ssfer_recipe_images_per_s"] = _SSFER_IPS[key]
        extra["vs_ssfer_recipe"] = ips / _SSFER_IPS[key]


@pytest.mark.benchmark(group="train_loop_pretrain")
def test_train_loop_pretrain(benchmark, request, loop_faces, loop_case):
    _run(benchmark, request, loop_faces, *loop_case, "pretrain")


@pytest.mark.benchmark(group="train_loop_stage1")
def test_train_loop_stage1(benchmark, request, loop_faces, loop_case):
    _run(benchmark, request, loop_faces, *loop_case, "stage1")
