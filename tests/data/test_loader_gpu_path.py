"""The loaders' GPU-path contract, checked on the CPU: uint8 (optionally pinned) batches, one EXIF-orientation rule
for every decoder and the size probe, batches that survive later draws, DALI-refused files decoded by PIL, files
read off the training thread."""

from __future__ import annotations

import io
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as F

from ferfast.data import IMAGE_KEYS, normalize_images
from ferfast.data import dali_loader as dl
from ferfast.data.augment import AugmentConfig
from ferfast.data.base import FER7_CLASSES, FaceDataset
from ferfast.data.check import decode_rgb
from ferfast.data.imageio import _fast_size, exif_orientation, probe_image
from ferfast.data.loaders import build_loader, make_plan, resolve_dali_device
from ferfast.data.torch_loader import TorchFaceLoader

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_loaders import check_tracking, gap, rect_dataset

needs_dali = pytest.mark.skipif(not dl.dali_available(), reason="DALI not installed")
needs_plugin = pytest.mark.skipif(
    not dl.dali_available() or dl.plugin_path() is None, reason="DALI or ferfast's DALI plugin missing"
)

# -- EXIF orientation ----------------------------------------------------------------------------------------------
#: The displayed picture: 96 wide, 64 high; a red "face" at the top left, a green mark at the bottom right.
W, H = 96, 64
FACE = (8, 6, 44, 34)  # x0, y0, x1, y1 in displayed pixels
#: What PIL's exif_transpose does per orientation, and its inverse (to store a displayed picture under a tag).
TO_STORED = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def displayed_picture() -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (60, 120, 200)
    x0, y0, x1, y1 = FACE
    img[y0:y1, x0:x1] = (230, 40, 40)
    img[50:60, 80:92] = (40, 220, 60)
    return img


def write_oriented(path, orientation: int, fmt: str = "JPEG") -> None:
    """Store the displayed picture so that applying EXIF ``orientation`` shows it upright."""
    pil = Image.fromarray(displayed_picture())
    if TO_STORED[orientation] is not None:
        pil = pil.transpose(TO_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = dict(quality=95, subsampling=0) if fmt == "JPEG" else {}
    pil.save(path, format=fmt, exif=exif, **kw)


def oriented_dataset(root, fmt: str = "JPEG") -> tuple[FaceDataset, list[int]]:
    orientations = [6, 8, 3, 1, 5, 7]
    ext = "jpg" if fmt == "JPEG" else "png"
    files = []
    for o in orientations:
        write_oriented(root / f"o{o}.{ext}", o, fmt)
        files.append(f"o{o}.{ext}")
    boxes = np.tile(np.array(FACE, np.float32), (len(files), 1))  # boxes are in displayed pixels
    ds = FaceDataset(
        name="exif",
        root=root,
        split="train",
        class_names=FER7_CLASSES,
        files=files,
        labels=np.zeros(len(files), np.int64),
        boxes=boxes,
        box_units="pixel",
    )
    return ds, orientations


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_written_files_really_are_rotated(tmp_path, fmt):
    """The test's own premise: stored pixels are not upright, and PIL's exif_transpose makes them so."""
    ds, orientations = oriented_dataset(tmp_path, fmt)
    for f, o in zip(ds.files, orientations):
        with Image.open(tmp_path / f) as im:
            stored = np.asarray(im.convert("RGB"))
            upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert upright.shape == (H, W, 3)
        assert np.abs(upright.astype(int) - displayed_picture()).mean() < 3, f
        if o in (5, 6, 7, 8):
            assert stored.shape == (W, H, 3), f
        elif o == 3:
            assert np.abs(stored.astype(int) - displayed_picture()).mean() > 30, f


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_probe_and_decode_rgb_apply_exif_orientation(tmp_path, fmt):
    ds, orientations = oriented_dataset(tmp_path, fmt)
    for f, o in zip(ds.files, orientations):
        data = (tmp_path / f).read_bytes()
        assert exif_orientation(data) == o, f
        assert _fast_size(data) == (W, H), f  # the header parse: width and height swapped for 5-8
        assert probe_image(data, f) == (W, H), f
        pixels = decode_rgb(data, f)
        assert pixels.shape == (H, W, 3), f
        assert np.abs(pixels.astype(int) - displayed_picture()).mean() < 3, f


def test_probe_of_other_formats_follows_pil_orientation(tmp_path):
    """Formats without ferfast's header parse (WebP here) go through PIL, with the same rule."""
    pil = Image.fromarray(displayed_picture()).transpose(TO_STORED[6])
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    pil.save(buf, format="WEBP", exif=exif, lossless=True)
    data = buf.getvalue()
    assert _fast_size(data) is None
    assert probe_image(data, "x.webp") == (W, H)
    assert np.array_equal(decode_rgb(data, "x.webp"), displayed_picture())


def _loaders(stage: str, ds: FaceDataset, size: int, seed: int = 0):
    """Every loader that runs here: torch, DALI with ferfast's operators, DALI with its own."""
    kw = dict(batch_size=len(ds), config=AugmentConfig(image_size=size), seed=seed)
    out = [("torch", build_loader(stage, ds, backend="torch", num_workers=0, **kw))]
    if dl.dali_available():
        plan = make_plan(stage, ds, **kw)
        if dl.plugin_path() is not None:
            loader = dl.DaliFaceLoader(plan)
            assert loader.fused
            out.append(("dali-plugin", loader))
        out.append(("dali-own", dl.DaliFaceLoader(plan, use_plugin=False)))
    return out


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_loader_delivers_the_upright_picture_and_its_box(tmp_path, fmt):
    ds, _ = oriented_dataset(tmp_path, fmt)
    size = 48
    ref = F.resize(
        torch.from_numpy(displayed_picture()).permute(2, 0, 1),
        [size, size],
        F.InterpolationMode.BICUBIC,
        antialias=True,
    ).double()
    for name, loader in _loaders("eval", ds, size):
        (batch,) = list(loader)
        images = batch["images"]
        assert images.dtype == torch.uint8 and images.shape == (len(ds), 3, size, size), name
        for k in range(len(ds)):  # the eval view is the whole upright picture, resized
            assert (images[k].double() - ref).abs().mean() < 4.0, (name, ds.files[k])
        expect = np.array(FACE, np.float32) / np.array([W, H, W, H], np.float32)
        torch.testing.assert_close(batch["boxes"], torch.from_numpy(np.tile(expect, (len(ds), 1))), atol=1e-5, rtol=0)
        assert check_tracking(images, batch["boxes"], size) == len(ds), name
    for name, loader in _loaders("stage1", ds, size, seed=3):  # random crops and flips, windows from the probe
        checked = 0
        for epoch in range(4):
            loader.set_epoch(epoch)
            for batch in loader:
                checked += check_tracking(batch["images"], batch["boxes"], size)
        assert checked >= 8, name


# -- batch format ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_uint8_batches_and_the_normalised_option(tmp_path, backend):
    ds = rect_dataset(tmp_path, n=16)
    kw = dict(
        unlabeled=ds.subset(range(8, 16)),
        backend=backend,
        batch_size=4,
        config=AugmentConfig(image_size=32),
        num_workers=0,
        seed=7,
    )
    raw = list(build_loader("stage2", ds.subset(range(8)), **kw))
    normed = list(build_loader("stage2", ds.subset(range(8)), normalize=True, **kw))
    assert len(raw) == len(normed) == 2
    for a, b in zip(raw, normed):
        for key in IMAGE_KEYS:
            assert a[key].dtype == torch.uint8 and a[key].shape == (4, 3, 32, 32), key
            assert b[key].dtype == torch.float32, key
            torch.testing.assert_close(b[key], normalize_images(a[key]), atol=1e-5, rtol=0)
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["boxes"], b["boxes"])


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_pin_memory_gives_page_locked_batches(tmp_path, backend):
    ds = rect_dataset(tmp_path, n=8)
    loader = build_loader(
        "stage1",
        ds,
        backend=backend,
        device="cpu",
        batch_size=4,
        pin_memory=True,
        num_workers=0,
        config=AugmentConfig(image_size=32),
    )
    batch = next(iter(loader))
    assert batch["images"].dtype == torch.uint8
    if not torch.cuda.is_available():  # pinning needs CUDA: the option is ignored, the batch still comes
        assert loader.pin_memory is False
        pytest.skip("no CUDA: page-locked memory cannot be allocated here")
    for key in ("images", "labels", "boxes", "index"):
        assert batch[key].is_pinned(), key


def test_dali_device_setting():
    assert resolve_dali_device("cpu") == "cpu" and resolve_dali_device("gpu") == "gpu"
    assert resolve_dali_device("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_dali_device("tpu")
    ds = FaceDataset(name="n", root=".", split="train", class_names=FER7_CLASSES, files=["a.jpg"] * 4)
    with pytest.raises(ValueError, match="torch loader decodes on the CPU"):
        build_loader("stage1", ds, backend="torch", device="gpu", batch_size=2)


# -- hand-off: a batch kept across draws is not overwritten ----------------------------------------------------------
@pytest.mark.parametrize("backend", [pytest.param("dali", marks=needs_dali), "torch"])
def test_batch_held_across_draws_is_not_overwritten(tmp_path, backend):
    ds = rect_dataset(tmp_path, n=40)
    loader = build_loader(
        "stage2",
        ds.subset(range(8)),
        unlabeled=ds.subset(range(8, 40)),
        backend=backend,
        batch_size=4,
        config=AugmentConfig(image_size=32),
        num_workers=0,
        seed=1,
    )
    it = iter(loader)
    held, clones = [], []
    for _ in range(6):  # keep every batch, draw on: DALI runs its next iterations meanwhile
        b = next(it)
        held.append(b)
        clones.append({k: v.clone() for k, v in b.items()})
    for b, c in zip(held, clones):
        for key in b:
            assert torch.equal(b[key], c[key]), key
    assert not torch.equal(held[0]["images"], held[1]["images"])  # distinct batches: the check can fail


# -- files DALI's decoder refuses, PIL reads -------------------------------------------------------------------------
def _gif(path) -> None:
    """A GIF of the displayed picture (three colours: the palette keeps them exactly): PIL reads it, DALI cannot."""
    Image.fromarray(displayed_picture()).save(path, format="GIF")


@needs_dali
def test_decoder_rejects_finds_the_refused_files(tmp_path):
    good = rect_dataset(tmp_path, n=3)
    _gif(tmp_path / "refused.gif")
    _gif(tmp_path / "refused2.gif")
    blobs = [
        np.frombuffer((tmp_path / f).read_bytes(), np.uint8)
        for f in [good.files[0], "refused.gif", good.files[1], good.files[2], "refused2.gif"]
    ]
    assert dl.decoder_rejects(blobs, "cpu") == [False, True, False, False, True]
    assert dl.decoder_rejects(blobs[2:4], "cpu") == [False, False]


@needs_dali
@pytest.mark.parametrize("use_plugin", [True, False])
def test_dali_refused_file_is_decoded_by_pil_not_skipped(tmp_path, use_plugin):
    if use_plugin and dl.plugin_path() is None:
        pytest.skip("ferfast's DALI plugin is not built")
    base = rect_dataset(tmp_path, n=6)
    _gif(tmp_path / "refused.gif")
    files = [*base.files[:3], "refused.gif", *base.files[3:]]
    ds = FaceDataset(name="mixed", root=tmp_path, split="test", class_names=FER7_CLASSES, files=files)
    cfg = AugmentConfig(image_size=32)
    loader = dl.DaliFaceLoader(make_plan("eval", ds, batch_size=len(files), config=cfg), use_plugin=use_plugin)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        (batch,) = list(loader)
    assert batch["index"].tolist() == list(range(len(files)))  # nothing skipped or substituted
    assert loader.skipped == 0
    messages = [str(x.message) for x in w]
    assert sum("refuses refused.gif" in m for m in messages) == 1  # warned once, naming the file
    ref = F.resize(
        torch.from_numpy(displayed_picture()).permute(2, 0, 1), [32, 32], F.InterpolationMode.BICUBIC, antialias=True
    ).double()
    assert (batch["images"][3].double() - ref).abs().mean() < 2.0
    # The next epoch knows the file: no new failure, no new warning.
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        (again,) = list(loader)
    assert not [x for x in w if "refuses" in str(x.message) or "restarted" in str(x.message)]
    assert torch.equal(again["images"], batch["images"])


@needs_dali
def test_gpu_decoder_rejection_falls_back_to_pil(tmp_path, monkeypatch):
    """The GPU case, simulated: the pipeline fails on a JPEG that PIL reads, and the decision function (which on a
    GPU machine runs DALI's ``mixed`` decoder) names it; the sample must still arrive, decoded by PIL."""
    ds = rect_dataset(tmp_path, n=8)
    cfg = AugmentConfig(image_size=32)
    plan = make_plan("eval", ds, batch_size=4, config=cfg)
    expected = list(dl.DaliFaceLoader(plan))
    victim = ds.files[5]
    victim_bytes = (tmp_path / victim).read_bytes()

    loader = dl.DaliFaceLoader(make_plan("eval", ds, batch_size=4, config=cfg))
    real_run = loader._run
    calls = {"run": 0, "asked": []}

    def failing_run():
        calls["run"] += 1
        if calls["run"] == 2:  # step 1 holds the victim: the decoder "rejects" it
            raise RuntimeError("nvImageCodec: decoding failed (simulated GPU rejection)")
        return real_run()

    def rejects(blobs, device):
        calls["asked"].append(device)
        return [bytes(b) == victim_bytes for b in blobs]

    monkeypatch.setattr(loader, "_run", failing_run)
    monkeypatch.setattr(dl, "decoder_rejects", rejects)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = list(loader)
    assert calls["asked"] == ["cpu"]
    assert victim_bytes != b"" and 5 in loader._source.cpu_decode[0]
    assert sum(f"refuses {victim}" in str(x.message) for x in w) == 1
    assert len(got) == len(expected) == 2 and loader.skipped == 0
    for a, b in zip(got, expected):
        assert torch.equal(a["index"], b["index"])
        # PIL's and DALI's JPEG decoders may differ by a level; the rest of the path is the same
        assert (a["images"].double() - b["images"].double()).abs().max() <= 2.0


@needs_dali
def test_unexplained_pipeline_failure_is_raised(tmp_path, monkeypatch):
    ds = rect_dataset(tmp_path, n=8)
    loader = dl.DaliFaceLoader(make_plan("eval", ds, batch_size=4, config=AugmentConfig(image_size=32)))

    def broken():
        raise RuntimeError("something else")

    monkeypatch.setattr(loader, "_run", broken)
    with pytest.raises(RuntimeError, match="something else"):
        list(loader)


# -- reading off the training thread -------------------------------------------------------------------------------
@needs_dali
def test_files_are_read_by_the_reader_thread_with_the_same_batches(tmp_path, monkeypatch):
    ds = rect_dataset(tmp_path, n=24)
    threads: set[str] = set()
    real_prepare = dl._Source.prepare

    def prepare(self, epoch, step):
        threads.add(threading.current_thread().name)
        return real_prepare(self, epoch, step)

    monkeypatch.setattr(dl._Source, "prepare", prepare)
    kw = dict(batch_size=4, config=AugmentConfig(image_size=32), seed=5)
    ahead = dl.DaliFaceLoader(make_plan("stage1", ds, **kw), read_ahead=3)
    inline = dl.DaliFaceLoader(make_plan("stage1", ds, **kw), read_ahead=0)
    for epoch in (0, 1):
        ahead.set_epoch(epoch)
        inline.set_epoch(epoch)
        threads.clear()
        a = list(ahead)
        assert threads and all(t.startswith("ferfast-dali-reader") for t in threads)
        threads.clear()
        b = list(inline)
        assert threads == {threading.current_thread().name}
        assert len(a) == len(b) == 6
        for x, y in zip(a, b):
            for key in x:
                assert torch.equal(x[key], y[key]), key
    ahead.close()


@needs_dali
def test_new_iteration_after_a_partial_one_starts_where_asked(tmp_path):
    """An iteration abandoned mid-epoch leaves batches queued in the pipeline; the next one must not see them."""
    ds = rect_dataset(tmp_path, n=24)
    kw = dict(batch_size=4, config=AugmentConfig(image_size=32), seed=2)
    used = dl.DaliFaceLoader(make_plan("stage1", ds, **kw))
    next(iter(used))  # abandoned after one batch
    used.set_epoch(1)
    fresh = dl.DaliFaceLoader(make_plan("stage1", ds, **kw))
    fresh.set_epoch(1)
    a, b = next(iter(used)), next(iter(fresh))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_torch_loader_pin_flag_needs_cuda(tmp_path):
    ds = rect_dataset(tmp_path, n=4)
    loader = TorchFaceLoader(make_plan("eval", ds, batch_size=4), num_workers=0, pin_memory=True)
    assert loader.pin_memory == torch.cuda.is_available()


# -- the DALI GPU path (runs where there is a CUDA GPU; skipped here) -----------------------------------------------
needs_gpu_dali = pytest.mark.skipif(
    not (dl.dali_available() and torch.cuda.is_available()), reason="needs DALI and a CUDA GPU"
)


@needs_gpu_dali
def test_dali_gpu_batches_match_the_cpu_pipeline_and_survive_later_draws(tmp_path):
    ds = rect_dataset(tmp_path, n=40)
    kw = dict(batch_size=4, config=AugmentConfig(image_size=32), seed=6)
    gpu = build_loader("stage1", ds, backend="dali", device="gpu", **kw)
    cpu = dl.DaliFaceLoader(make_plan("stage1", ds, **kw), use_plugin=False)  # the same DALI operators, on the CPU
    held, clones = [], []
    for b in gpu:  # keep every batch while DALI produces the next ones
        assert b["images"].is_cuda and b["images"].dtype == torch.uint8 and b["images"].shape == (4, 3, 32, 32)
        assert not b["labels"].is_cuda and b["labels"].is_pinned() and b["boxes"].is_pinned()
        held.append(b)
        clones.append({k: v.clone() for k, v in b.items()})  # on the current stream, where the batch is ready
    torch.cuda.synchronize()
    reference = list(cpu)
    assert len(held) == len(reference) == 10
    tracked = 0
    for b, c, r in zip(held, clones, reference):
        for key in b:
            assert torch.equal(b[key], c[key]), key
        assert torch.equal(b["index"], r["index"]) and torch.equal(b["labels"], r["labels"])
        torch.testing.assert_close(b["boxes"], r["boxes"], atol=1e-5, rtol=0)
        assert gap(b["images"].cpu(), r["images"]) < 0.05
        tracked += check_tracking(b["images"].cpu(), b["boxes"], 32)
    assert tracked >= 10


@needs_gpu_dali
def test_dali_gpu_batches_drawn_on_a_side_stream(tmp_path):
    """The engine's prefetcher draws on a side stream: the batch is ready in that stream's order."""
    ds = rect_dataset(tmp_path, n=24)
    kw = dict(batch_size=4, config=AugmentConfig(image_size=32), seed=8)
    loader = build_loader("stage1", ds, backend="dali", device="gpu", **kw)
    side = torch.cuda.Stream()
    got = []
    it = iter(loader)
    for _ in range(len(loader)):
        with torch.cuda.stream(side):
            b = next(it)
            normed = normalize_images(b["images"])  # read on the stream the batch was drawn on
        torch.cuda.current_stream().wait_stream(side)
        normed.record_stream(torch.cuda.current_stream())
        got.append((b["index"], normed))
    torch.cuda.synchronize()
    reference = list(dl.DaliFaceLoader(make_plan("stage1", ds, **kw), use_plugin=False))
    for (index, normed), r in zip(got, reference):
        assert torch.equal(index, r["index"])
        assert float((normed.cpu() - normalize_images(r["images"])).abs().mean()) < 0.05


@needs_gpu_dali
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_dali_gpu_decoder_applies_exif_orientation(tmp_path, fmt):
    ds, _ = oriented_dataset(tmp_path, fmt)
    (batch,) = list(
        build_loader("eval", ds, backend="dali", device="gpu", batch_size=len(ds), config=AugmentConfig(image_size=48))
    )
    images = batch["images"].cpu()
    ref = F.resize(
        torch.from_numpy(displayed_picture()).permute(2, 0, 1), [48, 48], F.InterpolationMode.BICUBIC, antialias=True
    ).double()
    for k in range(len(ds)):
        assert (images[k].double() - ref).abs().mean() < 4.0, ds.files[k]
    assert check_tracking(images, batch["boxes"], 48) == len(ds)


@needs_gpu_dali
def test_dali_gpu_decoder_refusal_is_decoded_by_pil(tmp_path):
    base = rect_dataset(tmp_path, n=6)
    _gif(tmp_path / "refused.gif")
    files = [*base.files[:3], "refused.gif", *base.files[3:]]
    ds = FaceDataset(name="mixed", root=tmp_path, split="test", class_names=FER7_CLASSES, files=files)
    loader = build_loader(
        "eval", ds, backend="dali", device="gpu", batch_size=len(files), config=AugmentConfig(image_size=32)
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        (batch,) = list(loader)
    assert batch["index"].tolist() == list(range(len(files))) and loader.skipped == 0
    assert any("refuses refused.gif" in str(x.message) for x in w)
    ref = F.resize(
        torch.from_numpy(displayed_picture()).permute(2, 0, 1), [32, 32], F.InterpolationMode.BICUBIC, antialias=True
    ).double()
    assert (batch["images"][3].cpu().double() - ref).abs().mean() < 2.0
