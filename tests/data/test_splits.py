"""Label fractions: SSFER's per-class rule, reproducibility, the JSON split file and its checks."""

import json
import math

import numpy as np
import pytest
import torch

from ferfast.data import LabelSplit, labeled_per_class, load_split, save_split, split_labeled
from ferfast.data.splits import SplitMismatchError

# 7 classes of very different sizes (RAF-DB-like imbalance), one class of a single image, one empty class.
COUNTS = [329, 74, 160, 1185, 478, 162, 1, 0, 680]


def make_labels(counts=COUNTS, seed=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.25, 1.0])
def test_per_class_counts_follow_ssfer_rule(fraction):
    labels = make_labels()
    split = split_labeled(labels, fraction, seed=3)
    kept = np.bincount(labels[list(split.labeled)], minlength=len(COUNTS))
    expected = [max(1, round(fraction * n)) if n else 0 for n in COUNTS]  # x_u_split, written out again
    assert kept.tolist() == expected
    assert labeled_per_class(COUNTS, fraction) == expected


def test_partition_sorted_and_reproducible():
    labels = make_labels()
    a = split_labeled(labels, 0.05, seed=1)
    assert sorted(a.labeled + a.unlabeled) == list(range(len(labels)))
    assert list(a.labeled) == sorted(a.labeled) and list(a.unlabeled) == sorted(a.unlabeled)
    assert not set(a.labeled) & set(a.unlabeled)
    assert split_labeled(labels, 0.05, seed=1) == a
    assert split_labeled(labels, 0.05, seed=2).labeled != a.labeled
    assert a.class_counts == tuple(COUNTS) and a.num_samples == len(labels)


def test_fraction_one_labels_everything_and_rounding_is_pythons():
    labels = make_labels()
    assert split_labeled(labels, 1.0).unlabeled == ()
    # Python's round: half to even (round(2.5) == 2, round(3.5) == 4), as SSFER's x_u_split uses it
    assert labeled_per_class([5, 7, 1], 0.5) == [2, 4, 1]
    assert labeled_per_class([10], 0.04) == [1]  # max(1, .)
    assert math.isclose(split_labeled(labels, 0.25).fraction, 0.25)


def test_accepts_tensors_lists_and_datasets():
    labels = make_labels([4, 6, 3])
    expected = split_labeled(labels, 0.5, seed=0)
    assert split_labeled(torch.from_numpy(labels), 0.5, seed=0) == expected
    assert split_labeled(labels.tolist(), 0.5, seed=0) == expected

    class Folder:  # torchvision's ImageFolder exposes ``targets``
        targets = labels.tolist()

    assert split_labeled(Folder(), 0.5, seed=0) == expected


@pytest.mark.parametrize(
    ("labels", "fraction", "seed", "error", "match"),
    [
        pytest.param([0, 1], 0.0, 0, ValueError, "fraction", id="fraction0"),
        pytest.param([0, 1], 1.5, 0, ValueError, "fraction", id="fraction>1"),
        pytest.param([0, 1], True, 0, ValueError, "fraction", id="fraction-bool"),
        pytest.param([0, -1], 0.5, 0, ValueError, "non-negative", id="negative-label"),
        pytest.param([0.5, 1.0], 0.5, 0, TypeError, "integer", id="float-labels"),
        pytest.param([[0, 1]], 0.5, 0, ValueError, "1-D", id="2d-labels"),
        pytest.param([0, 1], 0.5, 1.5, TypeError, "seed", id="float-seed"),
    ],
)
def test_bad_arguments(labels, fraction, seed, error, match):
    with pytest.raises(error, match=match):
        split_labeled(labels, fraction, seed)


def test_json_round_trip_is_atomic_and_checked(tmp_path):
    labels = make_labels()
    split = split_labeled(labels, 0.05, seed=7)
    path = save_split(split, tmp_path / "splits" / "raf_5pct.json")
    assert [p.name for p in path.parent.iterdir()] == ["raf_5pct.json"]  # no temporary file left behind
    assert load_split(path) == split
    assert load_split(path, labels=labels) == split
    with pytest.raises(ValueError, match="class counts"):
        load_split(path, labels=make_labels([5, 5, 5]))


def test_bad_split_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_split(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_split(broken)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match=r"other\.json.*not a ferfast label split"):
        load_split(other)
    good = split_labeled(make_labels([3, 3]), 0.5).to_dict()
    good["unlabeled"] = good["unlabeled"][:-1]  # no longer a partition
    overlap = tmp_path / "overlap.json"
    overlap.write_text(json.dumps(good))
    with pytest.raises(ValueError, match=r"overlap\.json.*partition"):
        load_split(overlap)
    missing_key = {k: v for k, v in split_labeled(make_labels([3, 3]), 0.5).to_dict().items() if k != "seed"}
    with pytest.raises(ValueError, match="malformed"):
        LabelSplit.from_dict(missing_key)


def test_a_split_file_is_reused_only_with_its_fraction_and_seed(tmp_path):
    labels = make_labels()
    path = save_split(split_labeled(labels, 0.25, seed=3), tmp_path / "split.json")
    assert load_split(path, labels=labels, fraction=0.25, seed=3).labeled == split_labeled(labels, 0.25, 3).labeled
    with pytest.raises(
        SplitMismatchError,
        match=r"split\.json was drawn with labeled fraction 0\.25 "
        r"\(this run: data\.labeled_fraction=0\.1\)",
    ) as info:
        load_split(path, labels=labels, fraction=0.1, seed=3)
    assert "another run.output_dir" in str(info.value) and "delete" in str(info.value)
    with pytest.raises(SplitMismatchError, match=r"seed 3 \(this run: data\.seed=4\)"):
        load_split(path, fraction=0.25, seed=4)
    with pytest.raises(SplitMismatchError, match=r"fraction 0\.25 .* and seed 3"):
        load_split(path, fraction=0.5, seed=0)
    with pytest.raises(SplitMismatchError, match="class counts"):  # another training set
        load_split(path, labels=make_labels([5, 5, 5]), fraction=0.25, seed=3)
    assert isinstance(SplitMismatchError("x"), ValueError)


def test_save_split_without_overwrite_keeps_the_existing_file(tmp_path):
    labels = make_labels([4, 4])
    first = save_split(split_labeled(labels, 0.5, seed=0), tmp_path / "split.json", overwrite=False)
    before = first.read_text()
    with pytest.raises(FileExistsError, match=r"split\.json"):
        save_split(split_labeled(labels, 1.0, seed=0), first, overwrite=False)
    assert first.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["split.json"]
