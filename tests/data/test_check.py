"""Image checking and decoding: bad files found with a reason, good ones of every mode decoded to RGB, the list file."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from ferfast.data.base import FER7_CLASSES, UNREADABLE_FILE, FaceDataset, load_unreadable
from ferfast.data.check import (
    IMG_EXTENSIONS,
    CheckReport,
    SkipCounter,
    UnreadableImageError,
    check_image,
    check_images,
    decode_rgb,
    list_image_files,
    write_unreadable,
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def palette_image() -> tuple[Image.Image, np.ndarray]:
    """A 5x7 palette image with three colours and a transparent one; returns it and its RGB pixels."""
    colours = np.array([[255, 0, 0], [0, 128, 255], [10, 200, 30], [7, 7, 7]], np.uint8)
    index = np.arange(35, dtype=np.uint8).reshape(5, 7) % 4
    image = Image.fromarray(index, "P")
    image.putpalette(colours.ravel().tolist())
    image.info["transparency"] = 3
    return image, colours[index]


def good_images() -> dict[str, tuple[bytes, np.ndarray | None]]:
    """Encoded good images and their expected RGB pixels (None where lossy JPEG only allows a looser check)."""
    rgb = noise_rgb(23, 37)
    rgba = np.dstack([rgb, np.full((23, 37), 17, np.uint8)])
    grey = noise_rgb(40, 41)[:, :, 0]
    grey16 = (np.arange(6 * 9, dtype=np.uint16).reshape(6, 9) * 1200).astype(np.uint16)
    pal, pal_rgb = palette_image()
    return {
        "rgb.png": (encode(Image.fromarray(rgb), "PNG"), rgb),
        "odd.bmp": (encode(Image.fromarray(rgb), "BMP"), rgb),
        "rgba.png": (encode(Image.fromarray(rgba, "RGBA"), "PNG"), rgb),  # alpha dropped, as torchvision does
        "grey.png": (encode(Image.fromarray(grey, "L"), "PNG"), np.repeat(grey[:, :, None], 3, 2)),
        "grey16.png": (
            encode(Image.fromarray(grey16), "PNG"),
            np.repeat((grey16 >> 8).astype(np.uint8)[:, :, None], 3, 2),
        ),
        "palette.png": (encode(pal, "PNG"), pal_rgb),
        "one.png": (encode(Image.fromarray(np.array([[[9, 99, 199]]], np.uint8)), "PNG"), np.array([[[9, 99, 199]]])),
        "grey.jpg": (encode(Image.fromarray(grey, "L"), "JPEG", quality=95), None),
        "cmyk.jpg": (encode(Image.new("CMYK", (31, 17), (255, 0, 0, 0)), "JPEG", quality=95), None),
        "one.jpg": (encode(Image.fromarray(np.array([[[200, 30, 60]]], np.uint8)), "JPEG"), None),
        "odd.jpg": (encode(Image.fromarray(rgb), "JPEG", quality=90), None),
    }


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Encoded bad images and the reason each must get."""
    jpeg = encode(Image.fromarray(noise_rgb(64, 64)), "JPEG", quality=90)
    png = encode(Image.fromarray(noise_rgb(64, 64)), "PNG")
    return {
        "corrupt.jpg": (np.random.default_rng(1).bytes(800), "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "empty.jpg": (b"", "empty file"),
        "notes.png": (b"these are my notes, not a picture\n", "not an image"),
    }


def write_tree(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_good_images_pass_and_decode_to_hwc_uint8_rgb():
    for name, (data, expected) in good_images().items():
        assert check_image(data) is None, name
        array = decode_rgb(data, name)
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, name
        assert array.flags.c_contiguous and array.flags.writeable, name
        if expected is not None:
            np.testing.assert_array_equal(array, expected, err_msg=name)
    grey = decode_rgb(good_images()["grey.jpg"][0], "grey.jpg")
    assert grey.shape == (40, 41, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])  # grey stays grey
    cyan = decode_rgb(good_images()["cmyk.jpg"][0], "cmyk.jpg")
    assert cyan.shape == (17, 31, 3)
    np.testing.assert_allclose(cyan.reshape(-1, 3).mean(0), [0, 255, 255], atol=6)  # pure cyan ink
    assert decode_rgb(good_images()["one.jpg"][0], "one.jpg").shape == (1, 1, 3)


@pytest.mark.parametrize("name", list(bad_images()))
def test_bad_images_are_reported_with_a_reason(name):
    data, reason = bad_images()[name]
    assert check_image(data) == reason
    with pytest.raises(UnreadableImageError, match=rf"{name}: {reason}") as info:
        decode_rgb(data, name)
    assert isinstance(info.value, OSError)
    assert (info.value.file, info.value.reason) == (name, reason)


def test_truncated_files_fail_the_check_even_when_pil_is_told_to_load_them(monkeypatch):
    data, _ = bad_images()["truncated.jpg"]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert check_image(data) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the user's setting is restored
    assert decode_rgb(data, "t.jpg").shape == (64, 64, 3)  # at training time the user's setting rules


def test_unreadable_image_error_pickles_and_check_image_wants_bytes():
    error = pickle.loads(pickle.dumps(UnreadableImageError("a/b.jpg", "truncated")))
    assert (error.file, error.reason, str(error)) == ("a/b.jpg", "truncated", "unreadable image a/b.jpg: truncated")
    with pytest.raises(TypeError, match="bytes"):
        check_image("face.jpg")


def test_list_image_files_uses_torchvisions_extensions_case_insensitively(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION_EXTENSIONS

    assert set(IMG_EXTENSIONS) == set(TORCHVISION_EXTENSIONS)
    write_tree(tmp_path, {"b/FACE.JPG": b"x", "a/deep/x.Png": b"x", "c.webp": b"x", "labels.csv": b"x", "d.txt": b"x"})
    assert list_image_files(tmp_path) == ["a/deep/x.Png", "b/FACE.JPG", "c.webp"]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_image_files(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match=r"labels\.csv"):
        list_image_files(tmp_path / "labels.csv")


@pytest.mark.parametrize("workers", [1, 3])
def test_check_images_of_a_folder(tmp_path, workers):
    good = {f"good/{name}": data for name, (data, _) in good_images().items()}
    bad = {f"bad/{name}": data for name, (data, _) in bad_images().items()}
    write_tree(tmp_path, {**good, **bad, "readme.txt": b"not checked"})
    calls = []
    report = check_images(tmp_path, workers=workers, progress=lambda done, total: calls.append((done, total)))
    assert report.total == len(good) + len(bad)
    assert not report.ok
    expected = sorted((f"bad/{name}", reason) for name, (_, reason) in bad_images().items())
    assert report.unreadable == expected  # in the folder's (sorted) order, whatever the number of workers
    assert calls == [(i, report.total) for i in range(1, report.total + 1)]


def test_check_images_of_a_dataset_reads_every_image(tmp_path):
    files = {"img/0.png": good_images()["rgb.png"][0], "img/1.jpg": bad_images()["truncated.jpg"][0]}
    write_tree(tmp_path, files)
    names = [*files, "img/missing.jpg"]
    ds = FaceDataset(name="t", root=tmp_path, split="train", class_names=FER7_CLASSES, files=names, labels=[0, 1, 2])
    report = check_images(ds)
    assert report.total == 3
    assert report.unreadable[0] == ("img/1.jpg", "truncated")
    assert report.unreadable[1][0] == "img/missing.jpg" and "cannot read" in report.unreadable[1][1]

    blobs = [good_images()["grey.png"][0], b""]
    from_records = FaceDataset(
        name="rec",
        root=tmp_path,
        split="unlabeled",
        class_names=FER7_CLASSES,
        files=["r#0", "r#1"],
        reader=lambda row: blobs[row],
    )
    assert check_images(from_records, workers=2).unreadable == [("r#1", "empty file")]
    assert check_images(from_records.subset([0])).ok


def test_check_images_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="source"):
        check_images(42)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        check_images(tmp_path / "nowhere")
    for workers in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            check_images(tmp_path, workers=workers)


def test_unreadable_list_round_trips_and_the_dataset_skips_it(tmp_path):
    images = {f"img/{name}": data for name, (data, _) in {**good_images(), **bad_images()}.items()}
    write_tree(tmp_path, images)
    ds = FaceDataset(name="t", root=tmp_path, split="train", class_names=FER7_CLASSES, files=sorted(images))
    report = check_images(ds)
    path = write_unreadable(report, tmp_path / UNREADABLE_FILE)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ferfast unreadable images")
    assert f"# {len(bad_images())} of {len(images)} images unreadable" in text
    assert "img/truncated.jpg\ttruncated\n" in text
    assert load_unreadable(path) == {f"img/{name}" for name in bad_images()}

    with pytest.warns(UserWarning, match=f"skipping {len(bad_images())} unreadable"):
        clean = ds.skip_unreadable()
    assert sorted(clean.files) == sorted(f"img/{name}" for name in good_images())
    assert check_images(clean).ok

    write_unreadable(CheckReport(total=len(clean)), path)  # a clean re-check empties the stale list
    assert load_unreadable(path) == set() and "# 0 of" in path.read_text()


def test_write_unreadable_refuses_names_the_list_cannot_hold(tmp_path):
    for name in ("a\tb.jpg", "#1.jpg", " lead.jpg"):
        with pytest.raises(ValueError, match="cannot be listed"):
            write_unreadable(CheckReport(total=1, unreadable=[(name, "truncated")]), tmp_path / "list.txt")
    assert not (tmp_path / "list.txt").exists()


def test_skip_counter_names_files_and_limits_its_warnings(tmp_path):
    counter = SkipCounter(verbose=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(100):
            counter.skip(f"img/{i}.jpg", "truncated")
    assert counter.count == 100
    messages = [str(w.message) for w in caught]
    # one by one up to 3, then at 6, 12, 24, 48, 96
    assert [m.split(";")[1].split()[0] for m in messages] == ["1", "2", "3", "6", "12", "24", "48", "96"]
    assert messages[0].startswith("skipped unreadable image img/0.jpg (truncated)")
    assert "data check" in messages[2] and "img/95.jpg" in messages[-1]
    with pytest.raises(ValueError, match="verbose"):
        SkipCounter(verbose=0)


def test_skip_counter_load_returns_none_for_unreadable_images(tmp_path):
    write_tree(tmp_path, {"ok.png": good_images()["rgb.png"][0], "bad.jpg": bad_images()["corrupt.jpg"][0]})
    ds = FaceDataset(
        name="t", root=tmp_path, split="train", class_names=FER7_CLASSES, files=["ok.png", "bad.jpg", "gone.png"]
    )
    counter = SkipCounter()
    np.testing.assert_array_equal(counter.load(ds, 0), good_images()["rgb.png"][1])
    with pytest.warns(RuntimeWarning, match=r"bad\.jpg \(not an image\); 1 images skipped"):
        assert counter.load(ds, 1) is None
    with pytest.warns(RuntimeWarning, match=r"gone\.png .*; 2 images skipped"):
        assert counter.load(ds, 2) is None
    assert counter.count == 2


def test_unreadable_image_error_also_takes_a_bare_message():
    """torch's DataLoader re-raises a worker's exception as ``type(e)(message)``."""
    error = UnreadableImageError("Caught UnreadableImageError in DataLoader worker process 0")
    assert str(error) == "Caught UnreadableImageError in DataLoader worker process 0" and error.reason is None
