"""RAF-DB basic in its official layout: label codes, prefix splits, aligned crops vs original photos with boxes."""

import cv2
import numpy as np
import pytest
from PIL import Image

from ferfast.data import split_labeled
from ferfast.data.base import BOX_SIDECAR, FER7_CLASSES, UNREADABLE_FILE, save_box_sidecar
from ferfast.data.formats import RAFDB

# RAF-DB's codes 1-7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral, written out by hand
RAFDB_CODE_NAMES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
TRAIN = [(f"train_{i:05d}.jpg", code) for i, code in enumerate([1, 2, 3, 4, 5, 6, 7, 4, 4, 7], start=1)]
TEST = [(f"test_{i:04d}.jpg", code) for i, code in enumerate([7, 1, 4], start=1)]


def colour_of(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-safe solid colour per image index."""
    return (20 + 37 * i % 200, 40 + 53 * i % 180, 60 + 71 * i % 160)


def write_image(path, colour, size=(100, 100), fmt=None) -> None:
    """A real image file (JPEG/PNG by extension) of one solid colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt, quality=95)


def decoded_colour(data: bytes) -> np.ndarray:
    """The mean RGB colour and the size of an encoded image."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "read_bytes did not return a decodable image"
    return img[..., ::-1].reshape(-1, 3).mean(axis=0)


def write_rafdb(root, train=TRAIN, test=TEST, original=True):
    """RAF-DB basic's layout: EmoLabel/list_patition_label.txt, Image/aligned, Image/original, Annotation/boundingbox.

    Returns {stem: (colour, box)} for every image.
    """
    (root / "EmoLabel").mkdir(parents=True)
    entries = [*train, *test]
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {c}\n" for n, c in entries))
    truth = {}
    for i, (name, _code) in enumerate(entries):
        stem = name[:-4]
        colour = colour_of(i)
        write_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", colour)
        box = (10.5 + i, 20.25, 110.0 + 2 * i, 140.75)
        if original:
            write_image(root / "Image" / "original" / f"{stem}.jpg", colour, size=(160, 200))
            box_file = root / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt"
            box_file.parent.mkdir(parents=True, exist_ok=True)
            box_file.write_text(" ".join(f"{v}" for v in box) + "\n")
        truth[stem] = (colour, box)
    return truth


@pytest.fixture
def rafdb_root(tmp_path):
    root = tmp_path / "basic"
    write_rafdb(root)
    return root


def test_every_code_maps_to_its_canonical_class(rafdb_root):
    ds = RAFDB(rafdb_root, "train")
    assert isinstance(ds, RAFDB) and len(ds) == len(TRAIN)
    assert ds.class_names == FER7_CLASSES and ds.num_classes == 7
    expected = [FER7_CLASSES.index(RAFDB_CODE_NAMES[code]) for _, code in TRAIN]
    assert ds.labels.tolist() == expected
    assert ds.targets.tolist() == expected
    # codes 1..7 in TRAIN's first seven rows: surprise, fear, disgust, happiness, sadness, anger, neutral
    assert ds.labels[:7].tolist() == [3, 4, 5, 1, 2, 6, 0]
    assert ds.class_counts().tolist() == [2, 3, 1, 1, 1, 1, 1]
    assert ds.files[0] == "Image/aligned/train_00001_aligned.jpg"


def test_split_follows_the_name_prefix(rafdb_root):
    train, test = RAFDB(rafdb_root, "train"), RAFDB(rafdb_root, "test")
    assert all(f.startswith("Image/aligned/train_") for f in train.files)
    assert test.files == [f"Image/aligned/test_{i:04d}_aligned.jpg" for i in (1, 2, 3)]
    assert test.labels.tolist() == [0, 3, 1]
    assert test.split == "test" and train.split == "train"


def test_aligned_images_decode_and_have_no_boxes(rafdb_root):
    ds = RAFDB(rafdb_root, "test")
    assert np.isnan(ds.boxes).all() and ds.box_units == "relative"
    for i, stem in enumerate(f"test_{k:04d}" for k in (1, 2, 3)):
        expected = colour_of(len(TRAIN) + i)
        data = ds.read_bytes(i)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (100, 100, 3)
        np.testing.assert_allclose(decoded_colour(data), expected, atol=3)
        assert ds.path(i) == rafdb_root / "Image" / "aligned" / f"{stem}_aligned.jpg"
    assert ds.relative_boxes(0, 100, 100).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_original_images_carry_pixel_boxes(tmp_path):
    truth = write_rafdb(tmp_path)
    ds = RAFDB(tmp_path, "train", aligned=False)
    assert ds.box_units == "pixel" and ds.files[1] == "Image/original/train_00002.jpg"
    expected = np.array([truth[f"train_{i:05d}"][1] for i in range(1, len(TRAIN) + 1)], np.float32)
    np.testing.assert_array_equal(ds.boxes, expected)
    img = cv2.imdecode(np.frombuffer(ds.read_bytes(1), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (200, 160, 3)
    np.testing.assert_allclose(ds.relative_boxes(1, 160, 200), expected[1] / [160, 200, 160, 200], rtol=1e-6)
    # a sidecar never overrides annotated boxes
    save_box_sidecar(tmp_path / BOX_SIDECAR, ds.files, np.full((len(ds), 4), 0.5))
    np.testing.assert_array_equal(RAFDB(tmp_path, "train", aligned=False).boxes, expected)


def test_box_sidecar_fills_aligned_boxes(rafdb_root):
    files = [f"Image/aligned/test_{i:04d}_aligned.jpg" for i in (1, 2, 3)]
    boxes = np.array([[0.1, 0.2, 0.8, 0.9], [np.nan] * 4, [0.25, 0.25, 0.75, 0.75]])
    save_box_sidecar(rafdb_root / BOX_SIDECAR, files, boxes)
    ds = RAFDB(rafdb_root, "test")
    assert ds.box_units == "relative"
    np.testing.assert_allclose(ds.boxes[[0, 2]], boxes[[0, 2]], atol=1e-6)
    assert np.isnan(ds.boxes[1]).all()
    assert np.isnan(RAFDB(rafdb_root, "train").boxes).all()  # keyed by file: no train image listed


def test_unreadable_list_drops_files(rafdb_root):
    dropped = "Image/aligned/train_00003_aligned.jpg"
    (rafdb_root / UNREADABLE_FILE).write_text(f"# written by data check\n{dropped}\tcannot identify image\n")
    with pytest.warns(UserWarning, match="1 unreadable"):
        ds = RAFDB(rafdb_root, "train")
    assert type(ds) is RAFDB and len(ds) == len(TRAIN) - 1 and dropped not in ds.files
    assert ds.labels.tolist() == [3, 4, 1, 2, 6, 0, 1, 1, 0]  # the disgust image is gone
    np.testing.assert_allclose(decoded_colour(ds.read_bytes(2)), colour_of(3), atol=3)  # row 2 is train_00004 now
    assert len(RAFDB(rafdb_root, "train", skip_unreadable=False)) == len(TRAIN)
    # an unreadable file missing on disk is not an error once listed
    (rafdb_root / dropped).unlink()
    with pytest.warns(UserWarning):
        assert len(RAFDB(rafdb_root, "train")) == len(TRAIN) - 1


def test_reproducible_and_split_labeled(rafdb_root):
    a, b = RAFDB(rafdb_root, "train"), RAFDB(rafdb_root, "train")
    assert a.files == b.files and a.labels.tolist() == b.labels.tolist()
    split = split_labeled(a, 0.5, seed=0)
    assert split.num_samples == len(a) and split.class_counts == tuple(a.class_counts().tolist())
    labeled = a.subset(split.labeled)
    assert type(labeled) is RAFDB and labeled.class_counts().tolist() == [1, 2, 1, 1, 1, 1, 1]


def test_missing_label_file_and_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"list_patition_label.txt"):
        RAFDB(tmp_path, "train")
    write_rafdb(tmp_path, original=False)
    with pytest.raises(FileNotFoundError, match=r"Image[/\\]original"):
        RAFDB(tmp_path, "train", aligned=False)
    (tmp_path / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_00002_aligned.jpg"):
        RAFDB(tmp_path, "train")


def test_missing_or_malformed_box_file(tmp_path):
    write_rafdb(tmp_path)
    (tmp_path / "Annotation" / "boundingbox" / "test_0002_boundingbox.txt").write_text("1.0 2.0 oops\n")
    with pytest.raises(ValueError, match=r"test_0002_boundingbox.txt"):
        RAFDB(tmp_path, "test", aligned=False)
    (tmp_path / "Annotation" / "boundingbox" / "test_0002_boundingbox.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_0002_boundingbox.txt"):
        RAFDB(tmp_path, "test", aligned=False)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("train_00099.jpg 8", "label code '8'"),
        ("train_00099.jpg 0", "label code '0'"),
        ("train_00099.jpg happy", "label code 'happy'"),
        ("val_0001.jpg 3", "train_ or test_"),
        ("train_00099.jpg", "expected"),
    ],
)
def test_bad_label_lines(tmp_path, line, match):
    write_rafdb(tmp_path, original=False)
    label_file = tmp_path / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text() + line + "\n")
    with pytest.raises(ValueError, match=match) as err:
        RAFDB(tmp_path, "test")
    assert "list_patition_label.txt: line 14" in str(err.value)


def test_bad_split(rafdb_root):
    with pytest.raises(ValueError, match="split must be one of"):
        RAFDB(rafdb_root, "val")
