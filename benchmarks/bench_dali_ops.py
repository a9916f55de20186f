"""ferfast's DALI CPU operators vs DALI's own, inside a DALI pipeline (one thread, batch of 64).

- ``dali_resized_crop``: a 70x70 window of 100x100 uint8 images -> 224x224 float32 CHW, flipped and
  normalised. ``ferfast-dali-op``: ``fn.ferfast_resized_crop_normalize``; ``dali-resize+cmn``:
  ``fn.resize`` (ROI, cubic, antialias) + ``fn.crop_mirror_normalize``.
- ``dali_rand_augment``: 2 RandAugment ops at magnitude bin 27/31 on 70x70 uint8 crops.
  ``ferfast-dali-op``: ``fn.ferfast_rand_augment`` (ops drawn by ferfast); ``dali-auto_aug``:
  ``nvidia.dali.auto_aug.rand_augment``.

Each round runs the pipeline once (one batch); ``extra_info["us_per_image"]``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ferfast.data.augment import RandAugmentConfig
from ferfast.data.dali_loader import dali_available, load_plugin, plugin_path
from ferfast.data.rand_augment import NUM_MAGNITUDE_BINS, draw_rand_augment

BATCH = 64
MEAN = [150.0, 117.0, 102.5]
STD = [58.0, 51.5, 48.5]

pytestmark = pytest.mark.skipif(
    not dali_available() or plugin_path() is None, reason="DALI or ferfast's DALI plugin missing"
)


def _images(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(BATCH)]


def _built(pipe_fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = pipe_fn()
        p.build()
        p.run()
    return p


def _time(benchmark, request, pipe, group: str, provider: str) -> None:
    rounds = 3 if request.config.getoption("quick") else 20

    def run():
        (out,) = pipe.run()
        assert len(out) == BATCH

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        op=group,
        mode="fwd",
        shape=f"B{BATCH}",
        variant="",
        device="cpu",
        provider=provider,
        us_per_image=benchmark.stats.stats.median / BATCH * 1e6,
    )


@pytest.mark.benchmark(group="dali_resized_crop")
@pytest.mark.parametrize("provider", ["ferfast-dali-op", "dali-resize+cmn"])
def test_dali_resized_crop(benchmark, request, provider):
    from nvidia.dali import fn, pipeline_def, types

    assert load_plugin()
    images = _images(100)
    windows = [np.array([10, 12, 70, 70], np.float32)] * BATCH
    mirror = [np.array([i % 2], np.int32) for i in range(BATCH)]

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        x, w, m = fn.external_source(
            source=lambda: (images, windows, mirror), num_outputs=3, batch=True, layout=["HWC", "", ""]
        )
        if provider == "ferfast-dali-op":
            return fn.ferfast_resized_crop_normalize(x, w, m, size=224, mean=MEAN, std=STD)
        y = fn.resize(
            x,
            size=[224, 224],
            roi_start=[12, 10],
            roi_end=[82, 80],
            roi_relative=False,
            interp_type=types.INTERP_CUBIC,
            antialias=True,
        )
        return fn.crop_mirror_normalize(y, mirror=m, dtype=types.FLOAT, output_layout="CHW", mean=MEAN, std=STD)

    _time(benchmark, request, _built(pipe), "dali_resized_crop", provider)


@pytest.mark.benchmark(group="dali_rand_augment")
@pytest.mark.parametrize("provider", ["ferfast-dali-op", "dali-auto_aug"])
def test_dali_rand_augment(benchmark, request, provider):
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.auto_aug import rand_augment

    assert load_plugin()
    images = _images(70)
    rng = np.random.default_rng(1)

    def draws():
        d = draw_rand_augment(rng, BATCH, RandAugmentConfig(), np.full((BATCH, 2), 70))
        return images, list(d.ops), list(d.magnitudes)

    @pipeline_def(
        batch_size=BATCH,
        num_threads=1,
        device_id=None,
        prefetch_queue_depth=1,
        enable_conditionals=provider != "ferfast-dali-op",
    )
    def pipe():
        if provider == "ferfast-dali-op":
            x, o, m = fn.external_source(source=draws, num_outputs=3, batch=True, layout=["HWC", "", ""])
            return fn.ferfast_rand_augment(x, o, m)
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        return rand_augment.rand_augment(x, shape=[70, 70], n=2, m=27, num_magnitude_bins=NUM_MAGNITUDE_BINS)

    _time(benchmark, request, _built(pipe), "dali_rand_augment", provider)
