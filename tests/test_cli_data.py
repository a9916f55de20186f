"""``python -m ferfast.train data {check,detect,synth}``: in-process through ``main`` and once as a real subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferfast.data.base import BOX_SIDECAR, UNREADABLE_FILE, load_box_sidecar, load_unreadable
from ferfast.data.formats import open_dataset
from ferfast.train import main

REPO = Path(__file__).resolve().parents[1]
SYNTH = ["--train", "35", "--test", "21", "--unlabeled", "12", "--identities", "8", "--size", "48", "--workers", "1"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset written once by ``data synth`` (tests copy it before changing it)."""
    root = tmp_path_factory.mktemp("synth") / "faces"
    assert main(["data", "synth", str(root), *SYNTH]) == 0
    return root


def copy_of(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "faces"
    shutil.copytree(root, dst)
    return dst


def write_jpeg(path: Path, seed: int = 0, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "JPEG")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- synth --------------------------------------------------------------------------------------


def test_synth_writes_rafdb_layout_and_is_cached(synthetic_root, capsys):
    train = open_dataset("rafdb", synthetic_root, "train")
    test = open_dataset("rafdb", synthetic_root, "test")
    assert (len(train), len(test)) == (35, 21)
    assert len(list((synthetic_root / "unlabeled").rglob("*.jpg"))) == 12
    assert Image.open(synthetic_root / train.files[0]).size == (48, 48)
    assert main(["data", "synth", str(synthetic_root), *SYNTH]) == 0
    out = capsys.readouterr().out
    assert "already holds this dataset" in out and "35 train + 21 test" in out and "12 unlabeled" in out


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--intensity", "99"], "--intensity"),
        (["--size", "8"], "--size"),
        (["--identities", "1"], "--identities"),
        (["--train", "0"], "--train"),
        (["--unlabeled", "-3"], "--unlabeled"),
        (["--workers", "many"], "--workers"),
    ],
)
def test_synth_bad_values_name_the_option(tmp_path, capsys, args, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", str(tmp_path / "out"), "--train", "14", "--test", "7", "--unlabeled", "0", *args])
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_synth_refuses_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["data", "synth", str(tmp_path), "--train", "14", "--test", "7", "--unlabeled", "0"]) == 1
    assert "argument OUT" in capsys.readouterr().err and (tmp_path / "mine.txt").read_text() == "keep me"


# -- check --------------------------------------------------------------------------------------


def test_check_a_clean_dataset(synthetic_root, tmp_path, capsys):
    root = copy_of(synthetic_root, tmp_path)
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "format: synthetic" in out and "train: 35 images, 0 unreadable" in out and "test: 21 images" in out
    assert "all 56 images are readable" in out and "data check" in out  # and the unlabeled pool's hint
    assert load_unreadable(root / UNREADABLE_FILE) == set() and (root / UNREADABLE_FILE).is_file()


def test_check_lists_unreadable_images_and_the_format_skips_them(synthetic_root, tmp_path, capsys):
    root = copy_of(synthetic_root, tmp_path)
    train = open_dataset("rafdb", root, "train")
    test = open_dataset("rafdb", root, "test")
    truncate(root / train.files[3])
    (root / test.files[0]).write_bytes(b"")
    assert main(["data", "check", str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "2 of 56 images are unreadable" in out
    assert f"{train.files[3]}: truncated" in out and f"{test.files[0]}: empty file" in out
    assert load_unreadable(root / UNREADABLE_FILE) == {train.files[3], test.files[0]}
    with pytest.warns(UserWarning, match="skipping 1 unreadable"):
        assert len(open_dataset("rafdb", root, "train")) == 34

    # --split checks one split; every run re-checks all images, whatever the list says
    assert main(["data", "check", str(root), "--split", "test", "--out", str(tmp_path / "test.txt")]) == 1
    assert load_unreadable(tmp_path / "test.txt") == {test.files[0]}
    assert "FaceDataset.skip_unreadable" in capsys.readouterr().out


def test_check_a_plain_folder_of_images(tmp_path, capsys):
    for i in range(12):
        write_jpeg(tmp_path / "pool" / f"id{i % 3}" / f"{i}.jpg", seed=i)
    truncate(tmp_path / "pool" / "id1" / "4.jpg")
    (tmp_path / "pool" / "id2" / "notes.JPG").write_text("not a photo")
    assert main(["data", "check", str(tmp_path / "pool")]) == 1
    out = capsys.readouterr().out
    assert "format: folder" in out and "2 of 13 images are unreadable" in out
    assert load_unreadable(tmp_path / "pool" / UNREADABLE_FILE) == {"id1/4.jpg", "id2/notes.JPG"}


def test_check_an_imagefolder_without_a_test_split(tmp_path, capsys):
    for i, cls in enumerate(["happy", "sad", "neutral"]):
        write_jpeg(tmp_path / "train" / cls / f"{i}.jpg", seed=i)
    assert main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "format: imagefolder" in out and "test: not there, skipped" in out and "train: 3 images" in out


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--workers", "0"], "argument --workers"),
        (["--workers", "two"], "argument --workers"),
        (["--format", "coco"], "argument --format"),
        (["--split", "holdout"], "argument --split"),
    ],
)
def test_check_bad_options_name_the_option(synthetic_root, capsys, args, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(synthetic_root), *args])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_check_bad_roots_name_root(tmp_path, capsys):
    for root in (tmp_path / "missing", tmp_path):  # absent; empty (no format, no images)
        with pytest.raises(SystemExit) as exit_info:
            main(["data", "check", str(root)])
        assert exit_info.value.code == 2
        assert "argument ROOT" in capsys.readouterr().err


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "ferfast_unreadable.txt" in out and "exit status" in out
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("check", "detect", "synth")) and "examples" in out
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "COMMAND" in capsys.readouterr().err


def test_check_as_a_subprocess(synthetic_root, tmp_path):
    root = copy_of(synthetic_root, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "ferfast.train", "data", "check", str(root)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "all 56 images are readable" in done.stdout

    bad = open_dataset("rafdb", root, "train").files[0]
    (root / bad).write_bytes(os.urandom(300))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"{bad}: not an image" in done.stdout

    done = subprocess.run([*command, "--workers", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "argument --workers" in done.stderr


# -- detect -------------------------------------------------------------------------------------


class BrightSquareDetector:
    """A stand-in for the Haar cascade: the bounding box of the white pixels."""

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        ys, xs = np.nonzero(image.min(axis=2) > 200)
        if len(xs) == 0:
            return None
        h, w = image.shape[:2]
        return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h], np.float32)


def test_detect_uses_the_synthetic_boxes_it_already_has(synthetic_root, tmp_path, capsys):
    root = copy_of(synthetic_root, tmp_path)
    before = (root / BOX_SIDECAR).read_text()
    assert main(["data", "detect", str(root)]) == 0  # cached: no detector needed
    out = capsys.readouterr().out
    assert "56 already have a row" in out and "a face was found in 56 of 56 images" in out
    assert (root / BOX_SIDECAR).read_text() == before


def test_detect_in_a_folder_writes_the_sidecar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ferfast.data.faces.FaceDetector", BrightSquareDetector)
    for i in range(4):
        image = np.full((40, 40, 3), 30, np.uint8)
        if i % 2 == 0:
            image[10:30, 5:25] = 255
        path = tmp_path / "pool" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
    assert main(["data", "detect", str(tmp_path / "pool")]) == 0
    out = capsys.readouterr().out
    assert "finding faces in 4 images" in out and "a face was found in 2 of 4 images" in out
    boxes = load_box_sidecar(tmp_path / "pool" / BOX_SIDECAR)
    np.testing.assert_allclose(boxes["0.png"], [5 / 40, 10 / 40, 25 / 40, 30 / 40], atol=1e-6)
    assert np.isnan(boxes["1.png"]).all()

    assert main(["data", "detect", str(tmp_path / "pool"), "--out", str(tmp_path / "b.csv"), "--force"]) == 0
    assert sorted(load_box_sidecar(tmp_path / "b.csv")) == ["0.png", "1.png", "2.png", "3.png"]


def test_detect_without_opencv_cascades_says_what_to_install(synthetic_root, tmp_path, capsys, monkeypatch):
    root = copy_of(synthetic_root, tmp_path)
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="5.0.0"))
    assert main(["data", "detect", str(root), "--split", "train", "--force"]) == 2
    assert "opencv-python-headless<5" in capsys.readouterr().err


def test_detect_skips_affectnet_and_names_bad_options(tmp_path, capsys):
    assert main(["data", "detect", str(tmp_path), "--format", "affectnet"]) == 0
    assert "no detection needed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "detect", str(tmp_path), "--format", "nope"])
    assert "argument --format" in capsys.readouterr().err


def test_check_an_unlistable_file_name_is_an_error(tmp_path, capsys):
    write_jpeg(tmp_path / "ok.jpg")
    (tmp_path / "#bad.jpg").write_bytes(b"")  # load_unreadable reads '#' lines as comments
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "'#bad.jpg' cannot be listed" in capsys.readouterr().err
