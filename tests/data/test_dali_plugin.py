"""ferfast's DALI operator (crop + antialiased bicubic resize + flip [+ normalise]) against torchvision, on the CPU."""

from __future__ import annotations

import io
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ferfast.data.dali_loader import dali_available, load_plugin, plugin_path
from ferfast.data.imageio import _fast_size, probe_image

needs_plugin = pytest.mark.skipif(not dali_available() or plugin_path() is None, reason="DALI or its plugin missing")
MEAN = [150.0, 117.0, 102.5]
STD = [58.0, 51.5, 48.5]


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_plugin_is_built_where_dali_and_cuda_headers_are():
    # CI installs DALI and has the CUDA toolkit's headers: the plugin must have been built, else the DALI loader
    # silently falls back to DALI's slower resize.
    if shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit here: the plugin is not built without its headers")
    assert plugin_path() is not None and load_plugin()


def run_op(images, windows, mirror, size, **kw):
    """ferfast_resized_crop_normalize on a batch; ``kw``: dtype, output_layout, mean, std."""
    from nvidia.dali import fn, pipeline_def

    assert load_plugin()

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=None, prefetch_queue_depth=1)
    def pipe():
        x, w, m = fn.external_source(
            source=lambda: (images, windows, mirror), num_outputs=3, batch=True, layout=["HWC", "", ""]
        )
        return fn.ferfast_resized_crop_normalize(x, w, m, size=size, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = pipe()
        p.build()
        (out,) = p.run()
    return [np.array(out.at(i)) for i in range(len(images))]


def smooth_image(rng, h, w):
    img = rng.random((h, w, 3)) * 255
    img = np.cumsum(img, axis=1) / np.arange(1, w + 1)[None, :, None]  # some structure, some noise
    return np.ascontiguousarray(np.clip(img * 1.7 - 60, 0, 255).astype(np.uint8))


@needs_plugin
@pytest.mark.parametrize("size", [224, 32, 7])
def test_matches_torchvision_resized_crop(size):
    rng = np.random.default_rng(size)
    shapes = [(100, 100), (90, 130), (48, 48), (1, 1), (5, 300), (300, 260), (13, 7)]
    images, windows, mirror = [], [], []
    for k, (h, w) in enumerate(shapes * 2):
        img = smooth_image(rng, h, w)
        ww, hh = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
        if k % 3 == 0:  # the whole image (evaluation view)
            ww, hh = w, h
        left, top = int(rng.integers(0, w - ww + 1)), int(rng.integers(0, h - hh + 1))
        images.append(img)
        windows.append(np.array([left, top, ww, hh], np.float32))
        mirror.append(np.array([k % 2], np.int32))
    from nvidia.dali import types

    got = run_op(images, windows, mirror, size, mean=MEAN, std=STD)
    raw = run_op(images, windows, mirror, size, dtype=types.UINT8, output_layout="HWC")
    planar = run_op(images, windows, mirror, size, dtype=types.UINT8)  # what the loaders use: uint8 CHW
    pixels = run_op(images, windows, mirror, size)  # float, mean 0 and std 1: unrounded pixel values
    for img, (left, top, ww, hh), m, out, out_u8, out_chw, out_px in zip(
        images, windows, mirror, got, raw, planar, pixels
    ):
        x = torch.from_numpy(img).permute(2, 0, 1).double()
        ref = F.resized_crop(
            x, int(top), int(left), int(hh), int(ww), [size, size], F.InterpolationMode.BICUBIC, antialias=True
        )
        if m[0]:
            ref = ref.flip(-1)
        norm = (ref - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        assert out.shape == (3, size, size) and out.dtype == np.float32
        np.testing.assert_allclose(out, norm.numpy(), atol=2e-4, rtol=0)  # fp32 taps vs fp64 torch
        assert out_u8.shape == (size, size, 3) and out_u8.dtype == np.uint8
        expect_u8 = ref.round().clamp(0, 255).permute(1, 2, 0).numpy()
        assert np.abs(out_u8.astype(np.float64) - expect_u8).max() <= 1.0  # rounding of a .5 may differ
        assert out_chw.shape == (3, size, size) and out_chw.dtype == np.uint8
        np.testing.assert_array_equal(out_chw, out_u8.transpose(2, 0, 1))  # same values, planar
        np.testing.assert_allclose(out_px, ref.numpy(), atol=2e-3, rtol=0)
        # torchvision's own uint8 path (the torch loader's): fixed-point taps and a uint8 intermediate, which clamps
        # the cubic's overshoot between its two passes, so a few pixels at sharp edges differ by more than one level
        ref_u8 = F.resized_crop(
            torch.from_numpy(img).permute(2, 0, 1),
            int(top),
            int(left),
            int(hh),
            int(ww),
            [size, size],
            F.InterpolationMode.BICUBIC,
            antialias=True,
        )
        if m[0]:
            ref_u8 = ref_u8.flip(-1)
        diff = np.abs(out_chw.astype(np.int64) - ref_u8.numpy().astype(np.int64))
        assert diff.mean() < 0.6 and (diff > 1).mean() < 0.08  # measured: at most 0.34 and 0.032 on these images


@needs_plugin
def test_bad_inputs_are_refused():
    from nvidia.dali import fn, pipeline_def

    assert load_plugin()
    grey = [np.zeros((10, 10, 1), np.uint8)]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        x, w, m = fn.external_source(
            source=lambda: (grey, [np.array([0, 0, 10, 10], np.float32)], [np.array([0], np.int32)]),
            num_outputs=3,
            batch=True,
            layout=["HWC", "", ""],
        )
        return fn.ferfast_resized_crop_normalize(x, w, m, size=8)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = pipe()
        p.build()
        with pytest.raises(RuntimeError, match="3 channels"):
            p.run()


def test_fast_header_size_matches_pil(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (37, 23, 3), dtype=np.uint8))
    cases = {
        "baseline.jpg": dict(img=rgb, quality=90),
        "progressive.jpg": dict(img=rgb, progressive=True),
        "grey.jpg": dict(img=rgb.convert("L")),
        "cmyk.jpg": dict(img=rgb.convert("CMYK")),
        "exif.jpg": dict(img=rgb, exif=Image.Exif()),
        "rgb.png": dict(img=rgb),
        "palette.png": dict(img=rgb.convert("P")),
    }
    for name, kw in cases.items():
        img = kw.pop("img")
        buf = io.BytesIO()
        img.save(buf, format="JPEG" if name.endswith("jpg") else "PNG", **kw)
        data = buf.getvalue()
        assert _fast_size(data) == (23, 37), name
        assert probe_image(data, name) == (23, 37)
    assert _fast_size(b"GIF89a....") is None  # other formats go to PIL


def test_probe_refuses_truncated_and_empty():
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="JPEG")
    data = buf.getvalue()
    from ferfast.data.check import UnreadableImageError

    with pytest.raises(UnreadableImageError, match="truncated"):
        probe_image(data[: len(data) // 2], "half.jpg")
    with pytest.raises(UnreadableImageError, match="empty"):
        probe_image(b"", "empty.jpg")
    with pytest.raises(UnreadableImageError, match="not an image"):
        probe_image(b"hello world", "text.png")
