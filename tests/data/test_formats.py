"""Every format through one door: open_dataset by name, detect_format, split_labeled on each dataset, and the
synthetic generator's output read as RAF-DB."""

import csv

import numpy as np
import pytest

from ferfast.data import labeled_per_class, split_labeled
from ferfast.data.base import FER7_CLASSES, FER8_CLASSES, FaceDataset, load_box_sidecar
from ferfast.data.formats import (
    FORMATS,
    RAFDB,
    AffectNet,
    FaceFolder,
    FERImageFolder,
    FERPlus,
    FileList,
    MXNetRecord,
    detect_format,
    open_dataset,
)
from tests.data.test_format_affectnet import rows_for, write_affectnet
from tests.data.test_format_ferplus import write_ferplus
from tests.data.test_format_folder import EXPRESSION_TRAIN, FACES, write_tree
from tests.data.test_format_mxrec import ms1m_records, write_rec
from tests.data.test_format_rafdb import write_rafdb

LABELED = ["rafdb", "ferplus", "affectnet", "imagefolder"]
UNLABELED = ["folder", "filelist", "mxrec"]


def make(fmt, tmp_path):
    """A small dataset of ``fmt`` in its official layout under tmp_path; returns the root to open."""
    root = tmp_path / fmt
    if fmt == "rafdb":
        write_rafdb(root, original=False)
    elif fmt == "ferplus":
        write_ferplus(root)
    elif fmt == "affectnet":
        write_affectnet(root, train=rows_for([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7, 9]))
    elif fmt == "imagefolder":
        write_tree(root / "train", EXPRESSION_TRAIN)
    elif fmt == "folder":
        write_tree(root, FACES)
    elif fmt == "filelist":
        write_tree(root, {"p": ["a.jpg", "b.jpg"]})
        (root / "list.txt").write_text("p/b.jpg 1\np/a.jpg 0\n")
        return root / "list.txt"
    elif fmt == "mxrec":
        write_rec(root, ms1m_records()[0])
    return root


@pytest.mark.parametrize(
    ("fmt", "kwargs", "cls", "classes"),
    [
        ("rafdb", {}, RAFDB, FER7_CLASSES),
        ("synthetic", {}, RAFDB, FER7_CLASSES),
        ("ferplus", {"label_mode": "probability"}, FERPlus, FER8_CLASSES),
        ("affectnet", {}, AffectNet, FER8_CLASSES),
        ("affectnet", {"num_classes": 7}, AffectNet, FER7_CLASSES),
        ("affectnet7", {}, AffectNet, FER7_CLASSES),
        ("affectnet8", {}, AffectNet, FER8_CLASSES),
        ("imagefolder", {}, FERImageFolder, FER7_CLASSES),
        ("folder", {}, FaceFolder, FER7_CLASSES),
        ("filelist", {}, FileList, FER7_CLASSES),
        ("mxrec", {}, MXNetRecord, FER7_CLASSES),
    ],
)
def test_open_dataset_by_name(tmp_path, fmt, kwargs, cls, classes):
    layout = {"synthetic": "rafdb", "affectnet7": "affectnet", "affectnet8": "affectnet"}.get(fmt, fmt)
    ds = open_dataset(fmt, make(layout, tmp_path), **kwargs)
    assert type(ds) is cls and isinstance(ds, FaceDataset)
    assert ds.class_names == classes and len(ds) > 0
    assert ds.split == ("unlabeled" if fmt in UNLABELED else "train")
    assert len(ds.read_bytes(len(ds) - 1)) > 0
    if fmt in UNLABELED:
        assert (ds.labels == -1).all()
    else:
        assert ds.labels.min() >= 0 and ds.labels.max() < len(classes)
    if fmt == "ferplus":
        assert ds.soft_labels is not None  # kwargs reached the class


def test_open_dataset_passes_split_and_format_options(tmp_path):
    root = make("rafdb", tmp_path)
    test = open_dataset("rafdb", root, "test")
    assert test.split == "test" and test.files == RAFDB(root, "test").files
    assert open_dataset("affectnet", make("affectnet", tmp_path), "test", num_classes=7).split == "val"
    images = tmp_path / "filelist"
    write_tree(images, {"q": ["x.jpg"]})
    (tmp_path / "elsewhere.txt").write_text("q/x.jpg\n")
    ds = open_dataset("filelist", images, list_file=tmp_path / "elsewhere.txt")
    assert ds.root == images and ds.files == ["q/x.jpg"]


def test_open_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset format 'raf'.*'affectnet7'.*'synthetic'"):
        open_dataset("raf", tmp_path)
    assert sorted(FORMATS) == sorted(
        [
            "rafdb",
            "ferplus",
            "affectnet",
            "affectnet7",
            "affectnet8",
            "imagefolder",
            "folder",
            "filelist",
            "mxrec",
            "synthetic",
        ]
    )
    with pytest.raises(ValueError, match=r"split must be one of.*unlabeled"):
        open_dataset("folder", make("folder", tmp_path), "test")
    assert open_dataset("folder", tmp_path / "folder", "unlabeled").split == "unlabeled"


@pytest.mark.parametrize("fmt", [*LABELED, *UNLABELED])
def test_detect_format(tmp_path, fmt):
    root = make(fmt, tmp_path)
    expected = "folder" if fmt == "filelist" else fmt  # a file list's folder is just a folder of images
    assert detect_format(root.parent if fmt == "filelist" else root) == expected


def test_detect_format_variants_and_errors(tmp_path):
    write_affectnet(tmp_path / "an", csv_dir="Manually_Annotated_file_lists")
    assert detect_format(tmp_path / "an") == "affectnet"
    write_rec(tmp_path / "rec", ms1m_records()[0], name="faces")
    assert detect_format(tmp_path / "rec" / "faces.rec") == "mxrec"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"cannot tell the dataset format of .*empty"):
        detect_format(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"nope"):
        detect_format(tmp_path / "nope")


@pytest.mark.parametrize("fmt", LABELED)
def test_split_labeled_on_each_dataset(tmp_path, fmt):
    ds = open_dataset(fmt, make(fmt, tmp_path))
    split = split_labeled(ds, 0.5, seed=3)
    assert split == split_labeled(ds.targets, 0.5, seed=3)
    assert sorted(split.labeled + split.unlabeled) == list(range(len(ds)))
    labeled = ds.subset(split.labeled)
    assert type(labeled) is type(ds)
    expected = labeled_per_class(ds.class_counts().tolist(), 0.5)
    assert labeled.class_counts().tolist()[: len(expected)] == expected
    assert labeled.files == [ds.files[i] for i in split.labeled]
    assert labeled.read_bytes(0) == ds.read_bytes(split.labeled[0])
    again = open_dataset(fmt, make(fmt, tmp_path / "again"))  # reproducible: same order, same split
    assert again.files == ds.files and split_labeled(again, 0.5, seed=3) == split


def test_synthetic_generator_output_reads_as_rafdb(tmp_path):
    from ferfast.data.synthetic import SyntheticFaceConfig, write_synthetic_dataset

    out = write_synthetic_dataset(
        tmp_path / "syn",
        num_train=14,
        num_test=7,
        num_unlabeled=6,
        num_identities=4,
        num_unlabeled_identities=2,
        config=SyntheticFaceConfig(size=32),
        workers=1,
    )
    assert detect_format(out) == "rafdb"
    train, test = open_dataset("synthetic", out, "train"), open_dataset("synthetic", out, "test")
    assert (len(train), len(test)) == (14, 7)
    with open(out / "synthetic_faces.csv", newline="") as fh:
        meta = {row["file"]: row for row in csv.DictReader(fh)}
    for ds in (train, test):
        assert [ds.class_names[k] for k in ds.labels] == [meta[f]["expression"] for f in ds.files]
        boxes = load_box_sidecar(out / "ferfast_boxes.csv")
        np.testing.assert_array_equal(ds.boxes, np.stack([boxes[f] for f in ds.files]))
        assert ds.box_units == "relative" and np.isfinite(ds.boxes).all()
    pool = FaceFolder(out / "unlabeled")
    assert len(pool) == 6 and pool.num_identities == 2 and np.isfinite(pool.boxes).all()
