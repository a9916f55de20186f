"""FERPlus: fer2013.csv pixels joined row by row with fer2013new.csv votes; majority and probability labels."""

import csv

import cv2
import numpy as np
import pytest

from ferfast.data import split_labeled
from ferfast.data.base import BOX_SIDECAR, FER8_CLASSES, UNREADABLE_FILE, save_box_sidecar
from ferfast.data.formats import FERPlus

VOTE_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]


def votes(**kw):
    """10 FERPlus votes in fer2013new.csv's column order."""
    assert set(kw) <= set(VOTE_COLUMNS)
    return [kw.get(c, 0) for c in VOTE_COLUMNS]


# (fer2013 Usage, fer2013new Image name, votes)
ROWS = [
    ("Training", "fer0000000.png", votes(neutral=10)),
    ("Training", "fer0000001.png", votes(happiness=6, surprise=4)),  # 60%: happiness
    ("Training", "fer0000002.png", votes(surprise=5, sadness=5)),  # exactly 50%: no majority
    ("Training", "", votes(happiness=10)),  # no image name: dropped
    ("Training", "fer0000004.png", votes(anger=4, unknown=6)),  # unknown dropped first: anger 4/4
    ("Training", "fer0000005.png", votes(NF=10)),  # no emotion vote at all
    ("Training", "fer0000006.png", votes(disgust=3, fear=3, contempt=4)),  # 40%: no majority
    ("Training", "fer0000007.png", votes(contempt=6, fear=2, NF=2)),  # 6/8: contempt
    ("Training", "fer0000008.png", votes(sadness=3, disgust=2, unknown=5)),  # 3/5: sadness
    ("PublicTest", "fer0000009.png", votes(fear=7, anger=3)),
    ("PublicTest", "fer0000010.png", votes(surprise=10)),
    ("PrivateTest", "fer0000011.png", votes(disgust=9, neutral=1)),
]
C = {name: i for i, name in enumerate(FER8_CLASSES)}


def make_pixels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


def write_ferplus(folder, rows=ROWS, pixels=None, fer_name="fer2013.csv", new_name="fer2013new.csv"):
    """fer2013.csv (``emotion,pixels,Usage``) and fer2013new.csv (``Usage,Image name,<10 votes>``), row aligned."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = make_pixels(len(rows)) if pixels is None else pixels
    with open(folder / fer_name, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        for i, (usage, _name, _votes) in enumerate(rows):
            text = pixels[i] if isinstance(pixels[i], str) else " ".join(str(v) for v in pixels[i].ravel())
            w.writerow([i % 7, text, usage])  # FER2013's own emotion label: ignored
    with open(folder / new_name, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Usage", "Image name", *VOTE_COLUMNS])
        for usage, name, v in rows:
            w.writerow([usage, name, *v])
    return pixels


def decode_grey(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_majority_labels_and_threshold(tmp_path):
    pixels = write_ferplus(tmp_path)
    ds = FERPlus(tmp_path, "train")
    assert isinstance(ds, FERPlus) and ds.class_names == FER8_CLASSES
    assert ds.files == [f"FER2013Train/fer000000{i}.png" for i in (0, 1, 4, 7, 8)]
    assert ds.labels.tolist() == [C["neutral"], C["happiness"], C["anger"], C["contempt"], C["sadness"]]
    assert ds.soft_labels is None
    assert ds.class_counts().tolist() == [1, 1, 1, 0, 0, 0, 1, 1]
    for i, row in enumerate((0, 1, 4, 7, 8)):
        np.testing.assert_array_equal(decode_grey(ds.read_bytes(i)), pixels[row])
    assert np.isnan(ds.boxes).all()


def test_probability_soft_labels(tmp_path):
    write_ferplus(tmp_path)
    ds = FERPlus(tmp_path, "train", label_mode="probability")
    assert ds.files == [f"FER2013Train/fer000000{i}.png" for i in (0, 1, 2, 4, 6, 7, 8)]  # NF-only row 5 dropped
    soft = ds.soft_labels
    assert soft.shape == (7, 8) and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    expected_row1 = np.zeros(8)
    expected_row1[C["happiness"]], expected_row1[C["surprise"]] = 0.6, 0.4
    np.testing.assert_allclose(soft[1], expected_row1, rtol=1e-6)
    np.testing.assert_allclose(soft[3], np.eye(8)[C["anger"]])  # unknown votes are not a class
    expected_row6 = np.zeros(8)
    expected_row6[[C["disgust"], C["fear"], C["contempt"]]] = [0.3, 0.3, 0.4]
    np.testing.assert_allclose(soft[4], expected_row6, rtol=1e-6)
    assert ds.labels.tolist() == np.argmax(soft, axis=1).tolist()
    assert ds.labels[4] == C["contempt"] and ds.labels[5] == C["contempt"]


def test_every_vote_column_maps_by_name(tmp_path):
    rows = [("Training", f"fer{i:07d}.png", votes(**{col: 10})) for i, col in enumerate(VOTE_COLUMNS[:8])]
    write_ferplus(tmp_path, rows)
    for mode in ("majority", "probability"):
        ds = FERPlus(tmp_path, "train", label_mode=mode)
        assert [ds.class_names[k] for k in ds.labels] == VOTE_COLUMNS[:8]


def test_usage_selects_the_split(tmp_path):
    pixels = write_ferplus(tmp_path)
    val, test = FERPlus(tmp_path, "val"), FERPlus(tmp_path, "test")
    assert val.files == ["FER2013Valid/fer0000009.png", "FER2013Valid/fer0000010.png"]
    assert val.labels.tolist() == [C["fear"], C["surprise"]] and val.split == "val"
    assert test.files == ["FER2013Test/fer0000011.png"] and test.labels.tolist() == [C["disgust"]]
    np.testing.assert_array_equal(decode_grey(test.read_bytes(0)), pixels[11])


def test_explicit_csv_paths(tmp_path):
    pixels = write_ferplus(tmp_path / "csvs", fer_name="pixels.csv", new_name="votes.csv")
    root = tmp_path / "root"
    root.mkdir()
    ds = FERPlus(root, "val", fer2013_csv=tmp_path / "csvs" / "pixels.csv", ferplus_csv=tmp_path / "csvs" / "votes.csv")
    assert ds.root == root and len(ds) == 2
    np.testing.assert_array_equal(decode_grey(ds.read_bytes(1)), pixels[10])
    no_root = FERPlus(
        split="val", fer2013_csv=tmp_path / "csvs" / "pixels.csv", ferplus_csv=tmp_path / "csvs" / "votes.csv"
    )
    assert no_root.root == tmp_path / "csvs" and no_root.files == ds.files
    with pytest.raises(ValueError, match="root"):
        FERPlus(split="val", fer2013_csv=tmp_path / "csvs" / "pixels.csv")


def test_bad_pixel_rows_are_skipped_with_a_warning(tmp_path):
    pixels = list(make_pixels(len(ROWS)))
    pixels[1] = " ".join(["7"] * (48 * 48 - 1))  # one value short
    pixels[4] = " ".join(["300"] * (48 * 48))  # out of range
    write_ferplus(tmp_path, pixels=pixels)
    with pytest.warns(UserWarning, match=r"skipping 2 row\(s\) of .*fer2013.csv"):
        ds = FERPlus(tmp_path, "train")
    assert ds.files == [f"FER2013Train/fer000000{i}.png" for i in (0, 7, 8)]
    np.testing.assert_array_equal(decode_grey(ds.read_bytes(2)), pixels[8])


def test_unreadable_list_sidecar_and_reproducibility(tmp_path):
    pixels = write_ferplus(tmp_path)
    (tmp_path / UNREADABLE_FILE).write_text("FER2013Train/fer0000001.png\n")
    save_box_sidecar(tmp_path / BOX_SIDECAR, ["FER2013Train/fer0000004.png"], np.array([[0.1, 0.1, 0.9, 0.95]]))
    with pytest.warns(UserWarning, match="unreadable"):
        ds = FERPlus(tmp_path, "train")
    assert type(ds) is FERPlus
    assert ds.files == [f"FER2013Train/fer000000{i}.png" for i in (0, 4, 7, 8)]
    np.testing.assert_allclose(ds.boxes[1], [0.1, 0.1, 0.9, 0.95], atol=1e-6)
    assert np.isnan(ds.boxes[[0, 2, 3]]).all()
    np.testing.assert_array_equal(decode_grey(ds.read_bytes(1)), pixels[4])  # rows follow the drop
    with pytest.warns(UserWarning):
        again = FERPlus(tmp_path, "train")
    assert again.files == ds.files and again.labels.tolist() == ds.labels.tolist()
    split = split_labeled(ds, 0.5, seed=0)
    assert split.num_samples == 4 and len(split.labeled) == 4  # one image per class: max(1, .) keeps each


def test_missing_files_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fer2013.csv"):
        FERPlus(tmp_path)
    write_ferplus(tmp_path)
    (tmp_path / "fer2013new.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"fer2013new.csv"):
        FERPlus(tmp_path)
    write_ferplus(tmp_path)
    new = tmp_path / "fer2013new.csv"
    new.write_text(new.read_text().replace(",contempt,", ",scorn,", 1))
    with pytest.raises(ValueError, match=r"fer2013new.csv: missing column\(s\) \['contempt'\]"):
        FERPlus(tmp_path)
    write_ferplus(tmp_path)
    fer = tmp_path / "fer2013.csv"
    fer.write_text(fer.read_text().replace("emotion,pixels,Usage", "emotion,image,Usage", 1))
    with pytest.raises(ValueError, match=r"fer2013.csv: missing column\(s\) \['pixels'\]"):
        FERPlus(tmp_path)


def test_row_count_mismatch_and_bad_votes(tmp_path):
    write_ferplus(tmp_path)
    new = tmp_path / "fer2013new.csv"
    lines = new.read_text().splitlines()
    new.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="row by row"):
        FERPlus(tmp_path)
    new.write_text("\n".join([*lines[:2], lines[2].replace(",6,", ",six,"), *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match=r"fer2013new.csv: line 3"):
        FERPlus(tmp_path)


@pytest.mark.parametrize(("kwargs", "match"), [({"split": "valid"}, "split"), ({"label_mode": "soft"}, "label_mode")])
def test_bad_arguments(tmp_path, kwargs, match):
    write_ferplus(tmp_path)
    with pytest.raises(ValueError, match=match):
        FERPlus(tmp_path, **kwargs)
