"""AffectNet's CSV layout: expression codes 0-10, 7 vs 8 classes, pixel face boxes, CSV and image folder lookup."""

import csv

import numpy as np
import pytest

from ferfast.data import split_labeled
from ferfast.data.base import BOX_SIDECAR, FER7_CLASSES, FER8_CLASSES, UNREADABLE_FILE, save_box_sidecar
from ferfast.data.formats import AffectNet
from tests.data.test_format_rafdb import colour_of, decoded_colour, write_image

HEADER = [
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
]
# AffectNet's codes, written out: 0 Neutral ... 7 Contempt, 8 None, 9 Uncertain, 10 Non-Face
AFFECTNET_NAMES = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]


def rows_for(codes, first_dir=100):
    """(subDirectory_filePath, x, y, w, h, code) per expression code, with distinct boxes."""
    return [
        (f"{first_dir + i}/{i:04d}ab{code}.jpg", 5 + i, 7 + 2 * i, 60 + i, 80 - i, code) for i, code in enumerate(codes)
    ]


TRAIN_ROWS = rows_for([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])
VAL_ROWS = rows_for([7, 6, 9, 0], first_dir=500)
NESTED = "Manually_Annotated/Manually_Annotated_Images"


def write_affectnet(
    root, train=TRAIN_ROWS, val=VAL_ROWS, csv_dir=".", image_dir="Manually_Annotated_Images", header=True
):
    """training.csv / validation.csv (official columns, quoted ';' landmarks) and real JPEGs under image_dir."""
    csv_folder = root / csv_dir
    csv_folder.mkdir(parents=True, exist_ok=True)
    images = root / image_dir
    for name, rows, offset in (("training.csv", train, 0), ("validation.csv", val, 100)):
        with open(csv_folder / name, "w", newline="") as fh:
            w = csv.writer(fh)
            if header:
                w.writerow(HEADER)
            for i, (path, x, y, bw, bh, code) in enumerate(rows):
                landmarks = ";".join(f"{v:.2f}" for v in np.linspace(x, x + bw, 136))
                w.writerow([path, x, y, bw, bh, landmarks, code, -0.25, 0.5])
                write_image(images / path, colour_of(offset + i), size=(120, 100))


def test_eight_classes_drop_codes_8_to_10(tmp_path):
    write_affectnet(tmp_path)
    ds = AffectNet(tmp_path, "train", num_classes=8)
    assert isinstance(ds, AffectNet) and ds.class_names == FER8_CLASSES and ds.name == "affectnet8"
    kept = [r for r in TRAIN_ROWS if r[5] <= 7]
    assert ds.labels.tolist() == [r[5] for r in kept] == [0, 1, 2, 3, 4, 5, 6, 7, 1]
    assert [ds.class_names[k] for k in ds.labels[:8]] == AFFECTNET_NAMES  # codes are the canonical order
    assert ds.files == [f"Manually_Annotated_Images/{r[0]}" for r in kept]
    assert ds.box_units == "pixel"
    np.testing.assert_array_equal(ds.boxes, np.array([[x, y, x + w, y + h] for _, x, y, w, h, _ in kept], np.float32))
    np.testing.assert_allclose(ds.relative_boxes(1, 120, 100), [6 / 120, 9 / 100, 67 / 120, 88 / 100], rtol=1e-6)
    np.testing.assert_allclose(decoded_colour(ds.read_bytes(3)), colour_of(3), atol=3)
    np.testing.assert_allclose(decoded_colour(ds.read_bytes(8)), colour_of(11), atol=3)


def test_seven_classes_drop_contempt(tmp_path):
    write_affectnet(tmp_path)
    ds = AffectNet(tmp_path, "train", num_classes=7)
    assert ds.class_names == FER7_CLASSES and ds.name == "affectnet7"
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 1]
    assert ds.class_counts().tolist() == [1, 2, 1, 1, 1, 1, 1]
    assert not any("ab7." in f for f in ds.files)


def test_validation_and_test_alias(tmp_path):
    write_affectnet(tmp_path)
    val, test = AffectNet(tmp_path, "val"), AffectNet(tmp_path, "test")
    assert val.split == test.split == "val"
    assert val.files == test.files and val.labels.tolist() == test.labels.tolist() == [7, 6, 0]
    assert AffectNet(tmp_path, "test", num_classes=7).labels.tolist() == [6, 0]
    np.testing.assert_allclose(decoded_colour(val.read_bytes(2)), colour_of(103), atol=3)


@pytest.mark.parametrize(
    ("csv_dir", "image_dir", "prefix"),
    [("Manually_Annotated_file_lists", NESTED, f"{NESTED}/"), ("Manually_Annotated_file_lists", ".", "")],
)
def test_csv_and_image_folder_lookup(tmp_path, csv_dir, image_dir, prefix):
    write_affectnet(tmp_path, csv_dir=csv_dir, image_dir=image_dir)
    ds = AffectNet(tmp_path, "val")
    assert ds.files == [prefix + r[0] for r in VAL_ROWS if r[5] <= 7]
    assert ds.csv_path == tmp_path / csv_dir / "validation.csv"
    np.testing.assert_allclose(decoded_colour(ds.read_bytes(0)), colour_of(100), atol=3)


def test_headerless_validation_csv(tmp_path):
    write_affectnet(tmp_path, header=False)
    ds = AffectNet(tmp_path, "val")
    assert ds.labels.tolist() == [7, 6, 0]
    np.testing.assert_array_equal(ds.boxes[0], [5, 7, 65, 87])


def test_unreadable_list_no_sidecar_and_split_labeled(tmp_path):
    write_affectnet(tmp_path)
    dropped = f"Manually_Annotated_Images/{TRAIN_ROWS[2][0]}"
    (tmp_path / UNREADABLE_FILE).write_text(dropped + "\n")
    save_box_sidecar(
        tmp_path / BOX_SIDECAR, [f"Manually_Annotated_Images/{TRAIN_ROWS[0][0]}"], np.array([[0, 0, 1, 1]])
    )
    with pytest.warns(UserWarning, match="unreadable"):
        ds = AffectNet(tmp_path, "train", num_classes=7)
    assert type(ds) is AffectNet and dropped not in ds.files and len(ds) == 7
    np.testing.assert_array_equal(ds.boxes[0], [5, 7, 65, 87])  # the CSV box, not the sidecar's
    assert ds.box_units == "pixel"
    with pytest.warns(UserWarning):
        assert AffectNet(tmp_path, "train", num_classes=7).files == ds.files
    split = split_labeled(ds, 0.5, seed=1)
    assert split.class_counts == (1, 2, 0, 1, 1, 1, 1) and len(split.labeled) == 6


def test_missing_csv_names_the_candidates(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"training.csv.*Manually_Annotated_file_lists"):
        AffectNet(tmp_path, "train")


def test_missing_column(tmp_path):
    write_affectnet(tmp_path)
    path = tmp_path / "training.csv"
    path.write_text(path.read_text().replace(",expression,", ",emotion,", 1))
    with pytest.raises(ValueError, match=r"training.csv: missing column\(s\) \['expression'\]"):
        AffectNet(tmp_path, "train")


@pytest.mark.parametrize("code", ["11", "-1", "happy"])
def test_bad_expression_code(tmp_path, code):
    rows = [*TRAIN_ROWS[:3], (TRAIN_ROWS[3][0], 1, 2, 3, 4, code)]
    write_affectnet(tmp_path, train=rows)
    with pytest.raises(ValueError, match=rf"training.csv: line 5: expression code '{code}' must be 0-10"):
        AffectNet(tmp_path, "train")


def test_missing_image_folder_names_the_candidates(tmp_path):
    write_affectnet(tmp_path, image_dir="elsewhere")
    with pytest.raises(
        FileNotFoundError, match=r"Manually_Annotated_Images.*Manually_Annotated/Manually_Annotated_Images"
    ):
        AffectNet(tmp_path, "train")


@pytest.mark.parametrize(("kwargs", "match"), [({"split": "validation"}, "split"), ({"num_classes": 6}, "num_classes")])
def test_bad_arguments(tmp_path, kwargs, match):
    write_affectnet(tmp_path)
    with pytest.raises(ValueError, match=match):
        AffectNet(tmp_path, **kwargs)
