"""``ferfast.predict`` and the ``predict`` command on real JPEG files: folders, globs, bad files, outputs."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ferfast
from ferfast.api import expand_images, load_model
from ferfast.config import TrainConfig, build_config
from ferfast.engine.checkpoint import save_checkpoint
from ferfast.models import create_model
from ferfast.train import main

CLASSES = ["happy", "sad", "angry"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny stage-2-like checkpoint (vit_demo, 32 px, three named classes), random weights."""
    torch.manual_seed(0)
    cfg = build_config(TrainConfig, data={"image_size": 32}, model={"name": "vit_demo"})
    model = create_model("vit_demo", img_size=32, num_classes=len(CLASSES), global_pool=cfg.model.global_pool)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-last.pth"
    save_checkpoint(path, model=model, ema=model, epoch=0, args=cfg, class_names=CLASSES, rng_state=False)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of JPEGs (nested, one .JPG upper case), a PNG, a corrupt .jpg and a text file."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    names = ["b.jpg", "a.jpeg", "sub/c.JPG", "sub/deeper/d.png", "sub/e.jpg"]
    for i, name in enumerate(names):
        pixels = rng.integers(0, 256, size=(40 + i, 36 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_inputs_folders_globs_and_files(photos):
    files = expand_images([photos])
    rel = [f.relative_to(photos).as_posix() for f in files]
    assert rel == ["a.jpeg", "b.jpg", "sub/broken.jpg", "sub/c.JPG", "sub/deeper/d.png", "sub/e.jpg"]  # sorted, no .txt
    globbed = expand_images([str(photos / "sub" / "*.jpg"), photos / "b.jpg", str(photos / "**" / "*.png")])
    assert [f.name for f in globbed] == ["broken.jpg", "e.jpg", "b.jpg", "d.png"]
    assert expand_images([photos / "b.jpg", photos / "b.jpg"]) == [photos / "b.jpg"]  # each file once
    assert expand_images(photos / "notes.txt") == [photos / "notes.txt"]  # a file named is kept
    with pytest.raises(FileNotFoundError, match="nope"):
        expand_images([photos / "nope.jpg"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_images([str(photos / "*.gif")])
    (photos.parent / "empty_folder").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="no image files"):
        expand_images([photos.parent / "empty_folder"])


def test_predict_names_classes_reports_bad_files_and_batches_like_one_by_one(checkpoint, photos):
    rows = ferfast.predict(checkpoint, [photos, photos / "notes.txt"], detect=False, topk=2, batch_size=4)
    assert len(rows) == 7
    bad = {r["path"] for r in rows if r["error"] is not None}
    assert bad == {str(photos / "sub" / "broken.jpg"), str(photos / "notes.txt")}
    for r in rows:
        if r["error"] is not None:
            assert r["label"] is None and r["topk"] == [] and r["probabilities"] is None
            continue
        assert r["label"] in CLASSES and len(r["topk"]) == 2 and r["topk"][0] == [r["label"], r["probability"]]
        assert r["topk"][0][1] >= r["topk"][1][1] and set(r["probabilities"]) == set(CLASSES)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) and r["box"] is None
    one_by_one = [ferfast.predict(checkpoint, [r["path"]], detect=False, topk=3, batch_size=1)[0] for r in rows]
    for batched, single in zip(rows, one_by_one):
        assert batched["error"] == single["error"] and batched["label"] == single["label"]
        if batched["error"] is None:
            for n in CLASSES:
                assert batched["probabilities"][n] == pytest.approx(single["probabilities"][n], abs=1e-5)


def test_predict_on_a_module_reads_its_image_size(checkpoint, photos):
    model, names = load_model(checkpoint)
    from_ckpt = ferfast.predict(checkpoint, photos / "b.jpg", detect=False)[0]
    named = ferfast.predict(model, [photos / "b.jpg"], detect=False, class_names=names)[0]  # size from patch_embed
    assert named["label"] == from_ckpt["label"]
    assert named["probability"] == pytest.approx(from_ckpt["probability"], abs=1e-6)
    assert ferfast.predict(model, [photos / "b.jpg"], detect=False)[0]["label"] in {"0", "1", "2"}
    assert ferfast.predict(model, [photos / "b.jpg"], detect=False, image_size=32)[0]["error"] is None
    with pytest.raises(ValueError, match="image_size"):
        ferfast.predict(torch.nn.Linear(3, 3), [photos / "b.jpg"], detect=False)
    with pytest.raises(ValueError, match="topk"):
        ferfast.predict(model, [photos / "b.jpg"], topk=0)


def test_cli_jsonl_and_csv_outputs_and_exit_codes(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    code = main(
        [
            "predict",
            str(checkpoint),
            str(photos),
            "--no-detect",
            "--topk",
            "2",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    assert code == 1  # the corrupt file
    assert "1 of 6 images could not be read" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(f) for f in expand_images([photos])]
    for r in rows:
        assert set(r) == {"path", "label", "probability", "topk", "box", "error"}
        if r["path"].endswith("broken.jpg"):
            assert r["error"] and r["label"] is None
        else:
            assert r["error"] is None and r["label"] in CLASSES and len(r["topk"]) == 2 and r["box"] is None
    api_rows = ferfast.predict(checkpoint, photos, detect=False, topk=2)
    assert [r["label"] for r in rows] == [r["label"] for r in api_rows]

    out_csv = tmp_path / "rows.csv"
    glob = str(photos / "**" / "*.jpg")  # quoted: expanded by ferfast
    assert (
        main(
            [
                "predict",
                str(checkpoint),
                glob,
                str(photos / "a.jpeg"),
                "--no-detect",
                "--topk",
                "3",
                "--output",
                str(out_csv),
            ]
        )
        == 1
    )
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert list(table[0]) == [
        "path",
        "label",
        "probability",
        "class_2",
        "probability_2",
        "class_3",
        "probability_3",
        "box",
        "error",
    ]
    assert [r["path"].rsplit("/", 1)[-1] for r in table] == ["b.jpg", "broken.jpg", "e.jpg", "a.jpeg"]
    for r in table:
        if r["path"].endswith("broken.jpg"):
            assert r["error"] and not r["label"]
        else:
            assert not r["error"] and {r["label"], r["class_2"], r["class_3"]} == set(CLASSES)
            assert float(r["probability"]) >= float(r["probability_2"]) >= float(r["probability_3"])
    capsys.readouterr()

    assert main(["predict", str(checkpoint), str(photos / "b.jpg"), "--no-detect", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("path,label,probability,box,error\n")
    assert main(["predict", str(checkpoint), str(photos / "b.jpg"), str(photos / "sub"), "--no-detect"]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{photos / 'b.jpg'}: ") and "whole image" in printed[0]
    assert any(line.startswith(f"{photos / 'sub' / 'broken.jpg'}: error: ") for line in printed)
    assert main(["predict", str(checkpoint), str(photos / "b.jpg"), "--json"]) == 0  # detection on: still a row
    assert json.loads(capsys.readouterr().out)["label"] in CLASSES
    for bad in (["--topk", "0"], ["--batch-size", "0"], ["--format", "xml"], ["--device", "bogus"]):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(checkpoint), str(photos / "b.jpg"), *bad])
        assert e.value.code == 2
    assert main(["predict", str(checkpoint), str(photos / "*.gif")]) == 1  # names no file: a runtime failure
    assert "*.gif" in capsys.readouterr().err
