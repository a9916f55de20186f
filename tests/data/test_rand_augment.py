"""RandAugment draws (ferfast.data.rand_augment) and ferfast's DALI RandAugment operator against torchvision."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from ferfast.data.augment import RandAugmentConfig
from ferfast.data.dali_loader import dali_available, load_plugin, plugin_path
from ferfast.data.rand_augment import (
    NUM_MAGNITUDE_BINS,
    RAND_AUGMENT_OPS,
    RandAugmentDraws,
    apply_rand_augment_torch,
    draw_rand_augment,
    magnitude_bins,
)

needs_plugin = pytest.mark.skipif(not dali_available() or plugin_path() is None, reason="DALI or its plugin missing")
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
SIZES = [(1, 1), (7, 5), (70, 70), (100, 130), (3, 3)]  # (W, H)
BINS = [0, 9, 27, 30]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # torchvision's kernels on these small images spend most of their time waking threads on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tv_magnitude(name: str, bin_: int, sign: int, w: int, h: int) -> float:
    """The magnitude torchvision's RandAugment passes to _apply_image_or_video_transform."""
    fn, signed = v2.RandAugment._AUGMENTATION_SPACE[name]
    table = fn(NUM_MAGNITUDE_BINS, h, w)
    if table is None:
        return 0.0
    return float(table[bin_]) * (sign if signed else 1)


def our_parameter(name: str, tv_mag: float) -> float:
    """The same op's parameter as draw_rand_augment stores it (float32)."""
    if name in ("TranslateX", "TranslateY"):
        return float(np.float32(int(tv_mag)))
    if name == "Solarize":
        return float(np.float32(255.0 * tv_mag))
    return float(np.float32(tv_mag))


def make_image(w: int, h: int, rng: np.random.Generator, constant: bool = False) -> np.ndarray:
    if constant:
        return np.full((h, w, 3), rng.integers(0, 256), dtype=np.uint8)
    # a smooth gradient plus noise: enough structure for the geometric ops, random for the blends
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1), (xx + yy) * 127 // max(w + h, 1)], axis=-1)
    return np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)


def chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


# ---- the torch side: apply_rand_augment_torch is torchvision's RandAugment --------------------------------------


@pytest.mark.parametrize("w,h", SIZES)
def test_apply_torch_equals_torchvision_randaugment_ops(w, h):
    rng = np.random.default_rng(w * 1000 + h)
    ra = v2.RandAugment()
    for op, name in enumerate(RAND_AUGMENT_OPS):
        for bin_ in BINS:
            for sign in (1, -1):
                img = chw(make_image(w, h, rng))
                mag = tv_magnitude(name, bin_, sign, w, h)
                want = ra._apply_image_or_video_transform(img, name, mag, interpolation=ra.interpolation, fill=ra._fill)
                got = apply_rand_augment_torch(img, np.array([op]), np.array([our_parameter(name, mag)]))
                assert got.dtype == torch.uint8 and got.shape == img.shape
                assert torch.equal(got, want), (name, bin_, sign, (w, h))


def test_apply_torch_rejects_bad_input():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="img_uint8_chw"):
        apply_rand_augment_torch(img.float(), [0], [0.0])
    with pytest.raises(ValueError, match="img_uint8_chw"):
        apply_rand_augment_torch(torch.zeros(4, 8, 8, dtype=torch.uint8), [0], [0.0])
    with pytest.raises(ValueError, match="ops_row"):
        apply_rand_augment_torch(img, [14], [0.0])
    with pytest.raises(ValueError, match="ops_row"):
        apply_rand_augment_torch(img, [-1], [0.0])
    with pytest.raises(ValueError, match="mags_row"):
        apply_rand_augment_torch(img, [1, 2], [0.0])
    with pytest.raises(TypeError, match="ops_row"):
        apply_rand_augment_torch(img, [1.0], [0.0])


# ---- draw_rand_augment ----------------------------------------------------------------------------------------


def test_draws_are_deterministic_for_a_seed():
    sizes = np.tile([[64, 48]], (50, 1))
    cfg = RandAugmentConfig()
    a = draw_rand_augment(np.random.default_rng(3), 50, cfg, sizes)
    b = draw_rand_augment(np.random.default_rng(3), 50, cfg, sizes)
    c = draw_rand_augment(np.random.default_rng(4), 50, cfg, sizes)
    assert isinstance(a, RandAugmentDraws)
    assert a.ops.dtype == np.int32 and a.ops.shape == (50, 2)
    assert a.magnitudes.dtype == np.float32 and a.magnitudes.shape == (50, 2)
    np.testing.assert_array_equal(a.ops, b.ops)
    np.testing.assert_array_equal(a.magnitudes, b.magnitudes)
    assert not np.array_equal(a.ops, c.ops)


def test_draws_cover_every_op_uniformly():
    n = 3000
    d = draw_rand_augment(np.random.default_rng(0), n, RandAugmentConfig(num_ops=2), np.full((n, 2), 70))
    counts = np.bincount(d.ops.ravel(), minlength=len(RAND_AUGMENT_OPS))
    assert len(counts) == len(RAND_AUGMENT_OPS) and counts.min() > 0
    expected = 2 * n / len(RAND_AUGMENT_OPS)
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected)), counts
    # with replacement: the same op twice in a row happens (1/14 of images)
    assert 0 < np.mean(d.ops[:, 0] == d.ops[:, 1]) < 0.15


def test_magnitudes_follow_the_bins_and_signs():
    n = 2000
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 200, (n, 2))
    cfg = RandAugmentConfig(num_ops=3, magnitude=9.0, magnitude_std=0.0)
    d = draw_rand_augment(rng, n, cfg, sizes)
    bin_ = 27  # round(9 / 10 * 30)
    for i in range(n):
        w, h = (int(v) for v in sizes[i])
        for op, m in zip(d.ops[i], d.magnitudes[i]):
            name = RAND_AUGMENT_OPS[op]
            want = our_parameter(name, tv_magnitude(name, bin_, 1, w, h))
            assert abs(float(m)) == want, (name, w, h, m, want)
    for op, name in enumerate(RAND_AUGMENT_OPS):
        mags = d.magnitudes[d.ops == op]
        if name in SIGNED:
            assert 0.4 < np.mean(mags < 0) < 0.6, name
        else:
            assert np.all(mags >= 0), name
    # concrete values at bin 27: shear 0.27, rotation 27 degrees, posterize 4 bits, solarize at 255 * 0.1
    assert set(np.abs(d.magnitudes[d.ops == RAND_AUGMENT_OPS.index("Rotate")]).tolist()) == {27.0}
    assert set(d.magnitudes[d.ops == RAND_AUGMENT_OPS.index("Posterize")].tolist()) == {4.0}
    np.testing.assert_allclose(np.abs(d.magnitudes[d.ops == RAND_AUGMENT_OPS.index("ShearX")]), 0.27, rtol=1e-6)
    np.testing.assert_allclose(d.magnitudes[d.ops == RAND_AUGMENT_OPS.index("Solarize")], 25.5, rtol=1e-5)


def test_translation_is_in_pixels_of_each_images_size():
    sizes = np.array([[331, 10], [10, 331], [70, 70]])
    cfg = RandAugmentConfig(num_ops=1, magnitude=10.0, magnitude_std=0.0)
    tx, ty = RAND_AUGMENT_OPS.index("TranslateX"), RAND_AUGMENT_OPS.index("TranslateY")
    seen = {tx: set(), ty: set()}
    for seed in range(200):
        d = draw_rand_augment(np.random.default_rng(seed), 3, cfg, sizes)
        for i in range(3):
            if d.ops[i, 0] in seen:
                seen[d.ops[i, 0]].add((i, abs(float(d.magnitudes[i, 0]))))
    # at the top bin torchvision translates by 150/331 of the side: 150 px of 331, int(4.53) = 4 px of 10
    assert seen[tx] == {(0, 150.0), (1, 4.0), (2, 31.0)}
    assert seen[ty] == {(0, 4.0), (1, 150.0), (2, 31.0)}


def test_magnitude_noise_has_the_expected_spread():
    n = 4000
    cfg = RandAugmentConfig(num_ops=1, magnitude=5.0, magnitude_std=0.5)
    d = draw_rand_augment(np.random.default_rng(7), n, cfg, np.full((n, 2), 32))
    rot = d.ops[:, 0] == RAND_AUGMENT_OPS.index("Rotate")
    bins = np.abs(d.magnitudes[rot, 0])  # Rotate: 1 degree per bin
    assert rot.sum() > 150
    assert abs(bins.mean() - 15.0) < 0.4
    assert 1.2 < bins.std() < 1.8  # 0.5 on timm's scale = 1.5 bins, plus the rounding
    # clipped to [0, 10]: a large spread never leaves the table
    d = draw_rand_augment(np.random.default_rng(7), n, RandAugmentConfig(1, 10.0, 3.0), np.full((n, 2), 32))
    rot = d.ops[:, 0] == RAND_AUGMENT_OPS.index("Rotate")
    assert np.abs(d.magnitudes[rot, 0]).max() == 30.0
    np.testing.assert_array_equal(magnitude_bins(np.array([0.0, 0.05, 4.5, 9.0, 10.0])), [0, 0, 14, 27, 30])


def test_zero_ops_and_zero_images():
    d = draw_rand_augment(np.random.default_rng(0), 4, RandAugmentConfig(num_ops=0), np.full((4, 2), 8))
    assert d.ops.shape == (4, 0) and d.magnitudes.shape == (4, 0)
    d = draw_rand_augment(np.random.default_rng(0), 0, RandAugmentConfig(), np.zeros((0, 2), dtype=np.int64))
    assert d.ops.shape == (0, 2)


def test_draw_rejects_bad_input():
    rng = np.random.default_rng(0)
    cfg = RandAugmentConfig()
    with pytest.raises(ValueError, match="sizes"):
        draw_rand_augment(rng, 2, cfg, np.full((3, 2), 8))
    with pytest.raises(ValueError, match="sizes"):
        draw_rand_augment(rng, 2, cfg, np.full((2, 2), 8.0))
    with pytest.raises(ValueError, match="sizes"):
        draw_rand_augment(rng, 2, cfg, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="n must"):
        draw_rand_augment(rng, -1, cfg, np.zeros((0, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="config"):
        draw_rand_augment(rng, 2, {"num_ops": 2}, np.full((2, 2), 8))
    with pytest.raises(TypeError, match="rng"):
        draw_rand_augment(np.random.RandomState(0), 2, cfg, np.full((2, 2), 8))


# ---- the DALI operator ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_plugin_is_built_where_dali_and_cuda_headers_are():
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if plugin_path() is None and not (Path(cuda_home) / "include" / "crt" / "host_config.h").is_file():
        pytest.skip("no CUDA toolkit headers here: the plugin is not built without them")
    assert plugin_path() is not None and load_plugin()


def run_op(images, ops, mags):
    """ferfast_rand_augment on a CPU pipeline, one batch."""
    from nvidia.dali import fn, pipeline_def

    assert load_plugin()

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=None, prefetch_queue_depth=1)
    def pipe():
        x, o, m = fn.external_source(
            source=lambda: (images, ops, mags), num_outputs=3, batch=True, layout=["HWC", "", ""]
        )
        return fn.ferfast_rand_augment(x, o, m)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = pipe()
        p.build()
        (out,) = p.run()
    return [np.array(out[i]) for i in range(len(images))]


# Every op is exact: the colour ops repeat torch's float32 arithmetic (x * r, fma(y, 1 - r, .) as torch's
# add(alpha), truncation), the smoothing of Sharpness is an exact integer division (S / 13 is never a tie), and the
# affine ops rebuild torchvision's float32 sampling grid operation by operation, so nearest-rounding ties break
# the same way.
@needs_plugin
@pytest.mark.parametrize("w,h", SIZES)
def test_dali_op_equals_torchvision_for_every_op(w, h):
    rng = np.random.default_rng(w * 7 + h)
    images, ops, mags, names = [], [], [], []
    for op, name in enumerate(RAND_AUGMENT_OPS):
        for bin_ in BINS:
            for sign in (1, -1):
                constant = name in ("AutoContrast", "Equalize") and bin_ == 30
                images.append(make_image(w, h, rng, constant=constant))
                ops.append(np.array([op], dtype=np.int32))
                mags.append(np.array([our_parameter(name, tv_magnitude(name, bin_, sign, w, h))], dtype=np.float32))
                names.append((name, bin_, sign))
    outs = run_op(images, ops, mags)
    for img, o, m, out, key in zip(images, ops, mags, outs, names):
        want = apply_rand_augment_torch(chw(img), o, m).permute(1, 2, 0).numpy()
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(out, want), (key, (w, h), int(np.abs(out.astype(int) - want).max()))


@needs_plugin
def test_dali_op_equals_torch_on_drawn_sequences(tmp_path):
    rng = np.random.default_rng(11)
    # a real PNG read back, cropped to awkward sizes, as the loader's crops are
    face = make_image(96, 112, rng)
    Image.fromarray(face).save(tmp_path / "face.png")
    face = np.array(Image.open(tmp_path / "face.png").convert("RGB"))
    n = 48
    sizes = np.stack([rng.integers(1, 97, n), rng.integers(1, 113, n)], axis=1)
    images = [np.ascontiguousarray(face[: int(s[1]), : int(s[0])]) for s in sizes]
    d = draw_rand_augment(rng, n, RandAugmentConfig(num_ops=3, magnitude=9.0, magnitude_std=2.0), sizes)
    outs = run_op(images, list(d.ops), list(d.magnitudes))
    for img, o, m, out in zip(images, d.ops, d.magnitudes, outs):
        want = apply_rand_augment_torch(chw(img), o, m).permute(1, 2, 0).numpy()
        assert np.array_equal(out, want), ([RAND_AUGMENT_OPS[k] for k in o], m, img.shape)


@needs_plugin
def test_dali_op_keeps_the_input_with_no_ops():
    img = make_image(9, 6, np.random.default_rng(0))
    (out,) = run_op([img], [np.zeros(0, np.int32)], [np.zeros(0, np.float32)])
    np.testing.assert_array_equal(out, img)


@needs_plugin
@pytest.mark.parametrize(
    "image,ops,mags,match",
    [
        (np.zeros((4, 4, 3), np.float32), np.array([0], np.int32), np.array([0], np.float32), "image"),
        (np.zeros((4, 4, 4), np.uint8), np.array([0], np.int32), np.array([0], np.float32), "image"),
        (np.zeros((4, 4, 3), np.uint8), np.array([14], np.int32), np.array([0], np.float32), "ops"),
        (np.zeros((4, 4, 3), np.uint8), np.array([-1], np.int32), np.array([0], np.float32), "ops"),
        (np.zeros((4, 4, 3), np.uint8), np.array([0], np.int64), np.array([0], np.float32), "ops"),
        (np.zeros((4, 4, 3), np.uint8), np.array([0], np.int32), np.array([0], np.float64), "magnitudes"),
        (np.zeros((4, 4, 3), np.uint8), np.array([0, 1], np.int32), np.array([0], np.float32), "magnitudes"),
        (np.zeros((4, 4, 3), np.uint8), np.array([10], np.int32), np.array([9], np.float32), "Posterize"),
        (np.zeros((4, 4, 3), np.uint8), np.array([6], np.int32), np.array([-1.5], np.float32), "Brightness"),
    ],
)
def test_dali_op_rejects_bad_input(image, ops, mags, match):
    with pytest.raises(RuntimeError, match=match):
        run_op([image], [ops], [mags])
