"""Loader throughput: ferfast's DALI and torch loaders vs SSFER's torchvision loaders, one epoch per round.

Data: 100x100 synthetic face JPEGs (RAF-DB aligned size), written once per session. Output: 224x224
float32 normalised batches of 64 on the CPU, as SSFER's loaders deliver them (ferfast's loaders with
``normalize=True``; in training they deliver uint8 and the engine normalises on its device, which
``loader_to_gpu`` measures).

- ``loader_pretrain``: the pretraining view (RandomResizedCrop(224, scale 0.2-1, bicubic) + flip +
  normalise). ``ssfer-imagefolder-w0``/``-w2``: torchvision ``ImageFolder`` with SSFER's transforms and
  ``num_workers`` 0 / 2 (SSFER's code uses 0); ``ferfast-torch-w2``: ferfast's torch loader, 2 workers, box
  tracking included; ``ferfast-dali-cpu``: ferfast's DALI CPU pipeline, box tracking included.
- ``loader_stage2``: one sample = an unlabeled image's weak and strong (RandAugment) views, plus, for
  ferfast and ``ssfer-stage2-w2``, a labeled view. ``ssfer-two-crop-w2``: SSFER's ``TransformFixMatch``
  pair loader alone (2 workers; torchvision's RandAugment at magnitude 27/31 = timm's m9, since timm's fails
  with Pillow 13); ``ssfer-stage2-w2``: that plus SSFER's labeled loader (2 workers each), zipped as in
  SSFER's training loop; ``ferfast-torch-stage2-w2`` and ``ferfast-dali-stage2``: ferfast's stage-2 loader.

- ``loader_to_gpu`` (GPU machines): ferfast's torch loader with pinned uint8 batches, fed through the engine's
  :class:`~ferfast.engine.prefetch.DevicePrefetcher` (copied ahead on a side stream, normalised on the GPU).

Every provider of a group delivers the same number of samples per round, so time ratios are throughput
ratios; ``extra_info`` has ``images_per_s`` / ``samples_per_s``. ``report.py --check-target`` checks
the loader targets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision import transforms as T

from ferfast.data.augment import FACE_MEAN, FACE_STD, AugmentConfig
from ferfast.data.dali_loader import dali_available
from ferfast.data.formats import FaceFolder
from ferfast.data.loaders import build_loader
from ferfast.engine.prefetch import DevicePrefetcher

BATCH = 64
IMAGE = 224
SOURCE = 100


@pytest.fixture(scope="session")
def face_jpegs(tmp_path_factory, request) -> Path:
    """An ImageFolder tree (``root/face/<id>/*.jpg``) of 100x100 synthetic face JPEGs."""
    from ferfast.data.synthetic import SyntheticFaceConfig, write_synthetic_dataset

    n = 256 if request.config.getoption("quick") else 1024
    out = tmp_path_factory.mktemp("loader_faces")
    write_synthetic_dataset(
        out,
        num_train=7,
        num_test=7,
        num_unlabeled=n,
        num_identities=max(8, n // 16),
        config=SyntheticFaceConfig(size=SOURCE),
    )
    return out / "unlabeled"


def _rounds(request) -> tuple[int, int]:
    return (1, 0) if request.config.getoption("quick") else (3, 1)


def _ssfer_transform() -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(IMAGE, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(FACE_MEAN, FACE_STD),
        ]
    )


class _TransformFixMatch:
    """SSFER's/FixMatch's pair: weak = crop + flip; strong = crop + flip + RandAugment (2 ops, timm m9)."""

    def __init__(self) -> None:
        crop = [
            T.RandomResizedCrop(IMAGE, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
        ]
        norm = [T.ToTensor(), T.Normalize(FACE_MEAN, FACE_STD)]
        self.weak = T.Compose(crop + norm)
        self.strong = T.Compose([*crop, T.RandAugment(num_ops=2, magnitude=27, num_magnitude_bins=31), *norm])

    def __call__(self, x):
        return self.weak(x), self.strong(x)


def _imagefolder(root: Path, transform, workers: int):
    # ImageFolder wants class folders: the identity folders serve (labels are not used here).
    ds = torchvision.datasets.ImageFolder(str(root), transform)
    return torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=True
    )


def _epoch_runner(loader, count_key=None):
    state = {"epoch": 0}

    def run() -> int:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state["epoch"])
        state["epoch"] += 1
        n = 0
        for batch in loader:
            first = batch[count_key] if count_key else batch[0]
            while isinstance(first, (list, tuple)):
                first = first[0]
            n += len(first)
        return n

    return run


def implementation(loader: object | None, provider: str) -> str:
    """What delivers a provider's batches, for the report: for DALI, ferfast's DALI operators or DALI's own."""
    if provider.startswith("ssfer"):
        return "torchvision ImageFolder + SSFER's transforms"
    if "dali" not in provider:
        return "ferfast torch loader"
    fused = getattr(loader, "fused", None)
    if fused is None:
        return "DALI (operators not reported by the loader)"
    return "DALI + ferfast's DALI operators" if fused else "DALI's own operators (ferfast's plugin not loaded)"


def _time(benchmark, request, run, group: str, provider: str, views: int, impl: str = "") -> None:
    rounds, warmup = _rounds(request)
    run()  # starts workers / builds the pipeline
    counts: list[int] = []

    def timed():
        counts.append(run())

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
    median = benchmark.stats.stats.median
    samples = counts[-1]
    benchmark.extra_info.update(
        op=group,
        mode="epoch",
        shape=f"B{BATCH}-{IMAGE}-from{SOURCE}px",
        variant="",
        device="cuda" if group.endswith("gpu") else "cpu",
        provider=provider,
        samples=samples,
        samples_per_s=samples / median,
        images_per_s=samples * views / median,
        implementation=impl or implementation(None, provider),
    )


PRETRAIN = ["ssfer-imagefolder-w0", "ssfer-imagefolder-w2", "ferfast-torch-w2", "ferfast-dali-cpu"]
STAGE2 = ["ssfer-two-crop-w2", "ssfer-stage2-w2", "ferfast-torch-stage2-w2", "ferfast-dali-stage2"]


def _need_dali(provider: str) -> None:
    if "dali" in provider and not dali_available():
        pytest.skip("NVIDIA DALI is not installed")


@pytest.mark.benchmark(group="loader_pretrain")
@pytest.mark.parametrize("provider", PRETRAIN)
def test_loader_pretrain(benchmark, request, face_jpegs, provider):
    _need_dali(provider)
    if provider.startswith("ssfer"):
        loader = _imagefolder(face_jpegs, _ssfer_transform(), int(provider[-1]))
        run = _epoch_runner(loader)
    else:
        ds = FaceFolder(face_jpegs)
        backend = "dali" if "dali" in provider else "torch"
        loader = build_loader(
            "pretrain",
            ds,
            backend=backend,
            batch_size=BATCH,
            num_workers=2,
            config=AugmentConfig(image_size=IMAGE),
            normalize=True,
        )
        run = _epoch_runner(loader, "images")
    _time(
        benchmark,
        request,
        run,
        "loader_pretrain",
        provider,
        views=1,
        impl=implementation(None if provider.startswith("ssfer") else loader, provider),
    )


@pytest.mark.benchmark(group="loader_stage2")
@pytest.mark.parametrize("provider", STAGE2)
def test_loader_stage2(benchmark, request, face_jpegs, provider):
    _need_dali(provider)
    impl = ""
    if provider == "ssfer-two-crop-w2":
        run = _epoch_runner(_imagefolder(face_jpegs, _TransformFixMatch(), 2))
        views = 2
    elif provider == "ssfer-stage2-w2":
        unl = _imagefolder(face_jpegs, _TransformFixMatch(), 2)
        lab = _imagefolder(face_jpegs, _ssfer_transform(), 2)

        def run() -> int:
            n = 0
            for (pair, _), (_x, _y) in zip(unl, lab):
                n += len(pair[0])
            return n

        views = 3
    else:
        ds = FaceFolder(face_jpegs)
        labeled = ds.subset(range(0, len(ds), 4))  # a labeled quarter; one epoch = one pass over the pool
        backend = "dali" if "dali" in provider else "torch"
        loader = build_loader(
            "stage2",
            labeled,
            unlabeled=ds,
            backend=backend,
            batch_size=BATCH,
            num_workers=2,
            config=AugmentConfig(image_size=IMAGE),
            normalize=True,
        )
        run = _epoch_runner(loader, "images_weak")
        views = 3
        impl = implementation(loader, provider)
    _time(benchmark, request, run, "loader_stage2", provider, views=views, impl=impl)


GPU_WORKERS = 8


@pytest.mark.benchmark(group="loader_to_gpu")
@pytest.mark.parametrize("stage", ["pretrain", "stage1"])
def test_torch_loader_to_gpu(benchmark, request, face_jpegs, stage):
    """The torch loader (the one the GPU machine has: no DALI there) feeding a GPU: pinned batches, copied with
    ``non_blocking=True``, one epoch per round; ``images_per_s`` is what a training loop could consume."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    ds = FaceFolder(face_jpegs)
    if stage == "stage1":  # stage 1 needs labels: the identity folders serve as classes here
        ds.labels = (ds.identities % len(ds.class_names)).astype("int64")
    workers = min(GPU_WORKERS, len(__import__("os").sched_getaffinity(0)))
    loader = build_loader(
        stage,
        ds,
        backend="torch",
        batch_size=BATCH,
        num_workers=workers,
        pin_memory=True,
        config=AugmentConfig(image_size=IMAGE),
    )

    feed = DevicePrefetcher(loader, torch.device("cuda"))

    def run() -> int:
        n = 0
        for batch in feed:
            n += len(batch["images"])
        torch.cuda.synchronize()
        return n

    _time(benchmark, request, _epoch_runner_fn(loader, run), "loader_to_gpu", f"ferfast-torch-w{workers}-{stage}", 1)


def _epoch_runner_fn(loader, run):
    state = {"epoch": 0}

    def wrapped() -> int:
        loader.set_epoch(state["epoch"])
        state["epoch"] += 1
        return run()

    return wrapped


def test_providers_deliver_equal_samples(face_jpegs):
    """The time ratios above are throughput ratios only if every provider delivers the same samples per epoch."""
    n = len(FaceFolder(face_jpegs))
    expected = n // BATCH * BATCH
    ds = FaceFolder(face_jpegs)
    torch_loader = build_loader(
        "pretrain", ds, backend="torch", batch_size=BATCH, num_workers=0, config=AugmentConfig(image_size=32)
    )
    assert sum(len(b["index"]) for b in torch_loader) == expected
    folder = torchvision.datasets.ImageFolder(str(face_jpegs))
    assert len(folder) == n and len(folder) // BATCH * BATCH == expected  # drop_last=True in SSFER's loaders
