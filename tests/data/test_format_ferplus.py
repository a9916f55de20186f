"""FERPlus: fer2013.csv pixels joined row by row with fer2013new.csv votes; majority and probability labels.

The label rules are microsoft/FERPlus ``src/ferplus.py``'s (``_process_data`` / ``load_folders``); every
expected label below is worked out by hand from them, in the comment beside its row.
"""

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
    ("Training", "fer0000004.png", votes(anger=6, unknown=4)),  # 6/10 (unknown counts): anger
    ("Training", "fer0000005.png", votes(NF=10)),  # no emotion vote at all
    ("Training", "fer0000006.png", votes(disgust=3, fear=3, contempt=4)),  # 40%: no majority
    ("Training", "fer0000007.png", votes(contempt=6, fear=2, NF=2)),  # 6/8: contempt
    ("Training", "fer0000008.png", votes(sadness=6, disgust=2, unknown=2)),  # 6/10: sadness
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
    # anger 6 < 75% of 10, then unknown (4) is reached: taking stops, unknown left out
    np.testing.assert_allclose(soft[3], np.eye(8)[C["anger"]])
    expected_row6 = np.zeros(8)  # contempt 4, then disgust and fear tied at 3: three columns, 10/10
    expected_row6[[C["disgust"], C["fear"], C["contempt"]]] = [0.3, 0.3, 0.4]
    np.testing.assert_allclose(soft[4], expected_row6, rtol=1e-6)
    expected_row8 = np.zeros(8)  # sadness 6, then disgust and unknown tied at 2: disgust taken, unknown left out
    expected_row8[[C["sadness"], C["disgust"]]] = [0.75, 0.25]
    np.testing.assert_allclose(soft[6], expected_row8, rtol=1e-6)
    # row 2's surprise/sadness tie goes to surprise, the first of the two in fer2013new.csv's columns
    # (canonical order has sadness first, so this is not np.argmax(soft))
    names = ["neutral", "happiness", "surprise", "anger", "contempt", "contempt", "sadness"]
    assert ds.labels.tolist() == [C[n] for n in names]


# The reference rules, one hand-made vote row each, both modes. Per row: the votes, the majority label
# (None: dropped), and the probability label with its soft label (None: dropped). "Outliers" are columns
# with a single vote, set to 0 first in all ten columns; "total" is what is left.
# One case per row (name, votes, majority label, probability label): the layout is the table.
# fmt: off
REFERENCE_CASES = [
    # every column has one vote: all outliers, nothing left
    ("all_single_votes", votes(**{c: 1 for c in VOTE_COLUMNS}), None, None),
    # five single votes removed: happiness 5/5. (Counted, it would be 5/10: no majority.)
    ("single_votes_removed", votes(happiness=5, neutral=1, surprise=1, sadness=1, anger=1, disgust=1), "happiness",
     ("happiness", {"happiness": 1.0})),
    # neutral, unknown and NF single votes removed: total 7, fear 4 > 3.5 (with unknown and NF still there:
    # 4/9, no majority). Probability: fear 4 < 5.25, then surprise 3: 7/7, stop.
    ("single_unknown_and_nf_removed", votes(fear=4, surprise=3, neutral=1, unknown=1, NF=1), "fear",
     ("fear", {"fear": 4 / 7, "surprise": 3 / 7})),
    # unknown 6/10 is the majority: dropped. Probability: unknown on top alone: dropped.
    ("unknown_majority", votes(anger=4, unknown=6), None, None),
    # unknown 5/10 on top: no majority; probability: unknown on top alone: dropped
    ("unknown_on_top_no_majority", votes(sadness=3, disgust=2, unknown=5), None, None),
    # the single neutral vote is an outlier: NF 9/9, not a face: dropped in both modes
    ("nine_nf_one_neutral", votes(NF=9, neutral=1), None, None),
    # NF 6/10 is the majority over happiness 4: dropped in both modes
    ("nf_majority_over_emotion", votes(NF=6, happiness=4), None, None),
    # no majority (4/10). Probability: neutral 4, then happiness and NF tied at 3: happiness taken,
    # NF reached after an emotion: left out, taking stops; 7 > 5 of 10 kept: neutral 4/7, happiness 3/7
    ("nf_tied_below_emotions", votes(neutral=4, happiness=3, NF=3), None,
     ("neutral", {"neutral": 4 / 7, "happiness": 3 / 7})),
    # no majority (4/10). Probability: happiness and unknown tied on top: happiness taken, unknown left out,
    # taking stops at 4 votes, not more than half of 10: dropped
    ("emotion_tied_with_unknown_on_top", votes(happiness=4, unknown=4, sadness=2), None, None),
    # exactly half is no majority. Probability: both tied columns taken, 10/10; the label is surprise,
    # the first of the two in fer2013new.csv's columns
    ("tie", votes(surprise=5, sadness=5), None, ("surprise", {"surprise": 0.5, "sadness": 0.5})),
    # happiness 8/10 >= 75%: taking stops there, surprise's 2 votes are not in the soft label
    ("stops_at_75_percent", votes(happiness=8, surprise=2), "happiness", ("happiness", {"happiness": 1.0})),
    # no majority (5/10). Probability: neutral 5 < 7.5, sadness 3 makes 8 >= 7.5: stop, anger left out
    ("second_column_reaches_75_percent", votes(neutral=5, sadness=3, anger=2), None,
     ("neutral", {"neutral": 5 / 8, "sadness": 3 / 8})),
    # anger 6/10. Probability: anger 6 < 7.5, then disgust and contempt tied at 2: three columns, 10/10
    ("three_columns", votes(anger=6, disgust=2, contempt=2), "anger",
     ("anger", {"anger": 0.6, "disgust": 0.2, "contempt": 0.2})),
    # total 18, no majority (5 <= 9). Probability: 5, 4, 3 = three columns holding 12 < 13.5 (75%): stop
    # at three; 12 > 9 (half): kept although the three do not reach 75%
    ("three_columns_under_75_percent_kept", votes(neutral=5, happiness=4, surprise=3, sadness=2, anger=2, disgust=2),
     None, ("neutral", {"neutral": 5 / 12, "happiness": 4 / 12, "surprise": 3 / 12})),
    # total 24: the three top columns hold 12, exactly half: dropped in both modes
    ("three_columns_half_dropped",
     votes(neutral=5, happiness=4, surprise=3, sadness=2, anger=2, disgust=2, fear=2, contempt=2, unknown=2),
     None, None),
    # total 11, no majority. Probability: happiness 4, surprise 3 (7 < 8.25), then sadness and anger tied
    # at 2 are both taken: four columns, more than three: dropped
    ("ties_make_four_columns", votes(happiness=4, surprise=3, sadness=2, anger=2), None, None),
]
# fmt: on


def shares(classes: dict[str, float]) -> np.ndarray:
    """A soft label in canonical class order from ``{class name: share}``."""
    out = np.zeros(len(FER8_CLASSES))
    for name, share in classes.items():
        out[C[name]] = share
    return out


@pytest.mark.parametrize("mode", ["majority", "probability"])
def test_reference_label_rules(tmp_path, mode):
    case_of = {f"fer{i:07d}.png": case for i, (case, *_rest) in enumerate(REFERENCE_CASES)}
    rows = [("Training", f"fer{i:07d}.png", v) for i, (_case, v, *_rest) in enumerate(REFERENCE_CASES)]
    write_ferplus(tmp_path, rows)
    ds = FERPlus(tmp_path, "train", label_mode=mode)
    got = {case_of[f.split("/")[1]]: FER8_CLASSES[k] for f, k in zip(ds.files, ds.labels.tolist())}
    if mode == "majority":
        assert ds.soft_labels is None
        assert got == {case: label for case, _v, label, _p in REFERENCE_CASES if label is not None}
        return
    expected = {case: prob for case, _v, _m, prob in REFERENCE_CASES if prob is not None}
    assert got == {case: label for case, (label, _shares) in expected.items()}
    for i, f in enumerate(ds.files):
        case = case_of[f.split("/")[1]]
        np.testing.assert_allclose(ds.soft_labels[i], shares(expected[case][1]), rtol=1e-6, err_msg=case)


def test_not_a_face_majority_is_dropped_not_neutral(tmp_path):
    """The row that used to become neutral: 9 not-a-face votes and 1 neutral vote."""
    rows = [("Training", "fer0000000.png", votes(neutral=10)), ("Training", "fer0000001.png", votes(NF=9, neutral=1))]
    write_ferplus(tmp_path, rows)
    for mode in ("majority", "probability"):
        ds = FERPlus(tmp_path, "train", label_mode=mode)
        assert ds.files == ["FER2013Train/fer0000000.png"] and ds.labels.tolist() == [C["neutral"]]


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
    new.write_text("\n".join([*lines[:2], lines[2].replace(",6,", ",nan,"), *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match=r"fer2013new.csv: line 3: votes must be non-negative and finite"):
        FERPlus(tmp_path)


@pytest.mark.parametrize(("kwargs", "match"), [({"split": "valid"}, "split"), ({"label_mode": "soft"}, "label_mode")])
def test_bad_arguments(tmp_path, kwargs, match):
    write_ferplus(tmp_path)
    with pytest.raises(ValueError, match=match):
        FERPlus(tmp_path, **kwargs)
