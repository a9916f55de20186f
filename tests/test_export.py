"""``ferfast.export.export_model`` and the ``export`` command: the exported ONNX model (run in onnxruntime) and the
torch.export program give the PyTorch classifier's logits on uint8 images of several batch sizes; the sidecar
describes the input; outputs are not overwritten without ``--force``; failures are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ferfast.api import load_model
from ferfast.config import TrainConfig, build_config
from ferfast.data import FACE_MEAN, FACE_STD, normalize_images
from ferfast.engine.checkpoint import save_checkpoint
from ferfast.export import METADATA_KEY, ONNX_FILE, PT2_FILE, SPEC_FILE, ExportVerificationError, export_model
from ferfast.models import create_model
from ferfast.train import main

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["happy", "sad", "angry"]
SIZE = 32
PREFIX = "python -m ferfast.train export: error: "


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny stage-2-like checkpoint (vit_demo, 32 px, three classes), random weights; EMA differs from the model."""
    torch.manual_seed(0)
    cfg = build_config(TrainConfig, data={"image_size": SIZE}, model={"name": "vit_demo"})
    model = create_model("vit_demo", img_size=SIZE, num_classes=len(CLASSES), global_pool=cfg.model.global_pool)
    ema = create_model("vit_demo", img_size=SIZE, num_classes=len(CLASSES), global_pool=cfg.model.global_pool)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-last.pth"
    save_checkpoint(path, model=model, ema=ema, epoch=0, args=cfg, class_names=CLASSES, rng_state=False)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """Both formats with the built-in preprocessing (the defaults), verified."""
    out = tmp_path_factory.mktemp("exported") / "out"
    return export_model(checkpoint, out)


def _images(batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)


def _expected(checkpoint, images: torch.Tensor) -> torch.Tensor:
    """The PyTorch classifier (EMA weights) on uint8 images normalised by the training loaders' function."""
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(normalize_images(images))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_on_uint8_images_matches_pytorch(checkpoint, exported, batch):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(exported.files["onnx"]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("images", "tensor(uint8)", ["batch", 3, SIZE, SIZE])
    assert (out.name, out.shape) == ("logits", ["batch", len(CLASSES)])
    images = _images(batch, seed=10 + batch)
    (logits,) = session.run(None, {"images": images.numpy()})
    assert logits.shape == (batch, len(CLASSES)) and logits.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(logits), _expected(checkpoint, images), atol=1e-4, rtol=1e-4)
    spec = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert spec["class_names"] == CLASSES and spec["input"]["dtype"] == "uint8"


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_export_program_matches_pytorch(checkpoint, exported, batch):
    extra = {METADATA_KEY: ""}
    program = torch.export.load(exported.files["torch_export"], extra_files=extra)
    images = _images(batch, seed=20 + batch)
    with torch.no_grad():
        logits = program.module()(images)
    torch.testing.assert_close(logits, _expected(checkpoint, images), atol=1e-5, rtol=1e-5)
    assert json.loads(extra[METADATA_KEY])["model_name"] == "vit_demo"


def test_graphs_hold_only_standard_ops(exported):
    """The classifier's forward is plain torch: no ferfast (or other custom) op reaches either graph."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(exported.files["onnx"])
    assert {n.domain for n in model.graph.node} == {""} and not model.functions
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    program = torch.export.load(exported.files["torch_export"])
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets and all(t.startswith("aten.") or t == "<built-in function getitem>" for t in targets), targets


def test_sidecar_describes_the_input_and_the_export(checkpoint, exported):
    out = exported.files["spec"].parent
    assert {p.name for p in out.iterdir()} == {ONNX_FILE, PT2_FILE, SPEC_FILE}  # no temporary file left
    spec = json.loads((out / SPEC_FILE).read_text())
    assert spec == json.loads(json.dumps(exported.spec))
    assert spec["model_name"] == "vit_demo" and spec["class_names"] == CLASSES and spec["num_classes"] == 3
    assert spec["image_size"] == [SIZE, SIZE]
    assert spec["input"] == {
        "name": "images",
        "shape": ["batch", 3, SIZE, SIZE],
        "layout": "NCHW",
        "channels": "RGB",
        "dtype": "uint8",
        "range": [0, 255],
        "normalized_in_model": True,
    }
    pre = spec["preprocessing"]
    assert pre["built_in"] is True and pre["mean"] == pytest.approx(FACE_MEAN) and pre["std"] == pytest.approx(FACE_STD)
    assert spec["output"]["name"] == "logits" and spec["output"]["shape"] == ["batch", 3]
    assert spec["source"]["checkpoint"] == str(checkpoint.resolve()) and len(spec["source"]["sha256"]) == 64
    assert spec["files"] == {"onnx": ONNX_FILE, "torch_export": PT2_FILE} and spec["onnx_opset"] == 18
    for fmt in ("onnx", "torch_export"):
        assert spec["verification"][fmt]["max_abs_diff"] == exported.max_abs_diff[fmt] < 1e-4
        assert spec["verification"][fmt]["batch_sizes"] == [1, 3]


def test_without_preprocessing_takes_normalised_floats(checkpoint, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    import ferfast.export as fe

    monkeypatch.setattr(fe, "_onnx_runner", lambda blob: None)  # as if onnxruntime were not installed
    result = export_model(checkpoint, tmp_path, formats=["onnx"], include_preprocessing=False, opset=20)
    assert set(result.files) == {"onnx", "spec"} and not (tmp_path / PT2_FILE).exists()
    assert result.max_abs_diff == {} and "onnxruntime" in result.not_verified["onnx"]
    assert "onnxruntime" in result.spec["verification"]["onnx"]["skipped"]
    assert result.spec["input"]["dtype"] == "float32" and result.spec["input"]["normalized_in_model"] is False
    assert result.spec["onnx_opset"] == 20
    session = ort.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    images = _images(2, seed=3)
    x = normalize_images(images)
    assert session.get_inputs()[0].type == "tensor(float)"
    (logits,) = session.run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), _expected(checkpoint, images), atol=1e-4, rtol=1e-4)


def test_float_pixels_program_without_verification(checkpoint, tmp_path):
    result = export_model(checkpoint, tmp_path, formats="torch-export", input_dtype="float32", verify=False)
    assert set(result.files) == {"torch_export", "spec"} and result.max_abs_diff == {}
    assert result.spec["verification"] == {"torch_export": {"skipped": "verification turned off"}}
    assert result.spec["input"]["dtype"] == "float32" and result.spec["input"]["range"] == [0, 255]
    assert result.spec["onnx_opset"] is None and result.spec["files"] == {"torch_export": PT2_FILE}
    images = _images(3, seed=5)
    with torch.no_grad():
        logits = torch.export.load(result.files["torch_export"]).module()(images.float())
    torch.testing.assert_close(logits, _expected(checkpoint, images), atol=1e-5, rtol=1e-5)


def test_a_mismatch_raises_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    import ferfast.export as fe

    real = fe._program_runner

    def off_by_half(blob):
        run = real(blob)
        return lambda x: run(x) + 0.5

    monkeypatch.setattr(fe, "_program_runner", off_by_half)
    with pytest.raises(ExportVerificationError, match=r"torch_export model's logits differ .* by up to 0\.5"):
        export_model(checkpoint, tmp_path / "out", formats=["torch_export"])
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_and_rejects_bad_arguments(checkpoint, exported, tmp_path):
    out = exported.files["spec"].parent
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match=ONNX_FILE):
        export_model(checkpoint, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    for kwargs, match in [
        ({"formats": ["tflite"]}, "formats"),
        ({"formats": []}, "formats"),
        ({"opset": 13}, "opset"),
        ({"include_preprocessing": False, "input_dtype": "uint8"}, "float32"),
        ({"input_dtype": "int16"}, "input_dtype"),
        ({"rtol": 0}, "rtol"),
        ({"opset": 1000}, "opset 1000"),
    ]:
        with pytest.raises(ValueError, match=match):
            export_model(checkpoint, tmp_path / "never", **kwargs)
    with pytest.raises(FileNotFoundError, match="no_such"):
        export_model(tmp_path / "no_such.pth", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "ferfast.train", "export", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


def test_cli_writes_verifies_and_refuses_to_overwrite(checkpoint, tmp_path):
    out = tmp_path / "cli_out"
    r = _cli(str(checkpoint), str(out))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} == {ONNX_FILE, PT2_FILE, SPEC_FILE}
    assert f"wrote {out / ONNX_FILE}" in r.stdout and f"wrote {out / PT2_FILE}" in r.stdout
    assert "max |logit - PyTorch's|" in r.stdout and "images uint8 [batch, 3, 32, 32]" in r.stdout
    assert "happy, sad, angry" in r.stdout
    again = _cli(str(checkpoint), str(out), "--format", "torch-export")
    assert again.returncode == 1 and again.stdout == ""
    err = _lines(again.stderr)
    assert len(err) == 1 and err[0].startswith(PREFIX) and str(out / PT2_FILE) in err[0] and "--force" in err[0]


def test_cli_failures_are_one_line(checkpoint, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    assert main(["export", str(missing), str(tmp_path / "out")]) == 1
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(PREFIX) and str(missing) in err[0]

    mae = tmp_path / "mae.pth"  # a pretraining checkpoint: no classifier, no class names
    cfg = build_config(TrainConfig, data={"image_size": SIZE}, model={"name": "vit_demo"})
    save_checkpoint(mae, model=create_model("mae_vit_demo", img_size=SIZE), epoch=0, args=cfg, rng_state=False)
    assert main(["export", str(mae), str(tmp_path / "out")]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(PREFIX) and "class names" in err[0]

    assert main(["export", str(checkpoint), str(tmp_path / "out"), "--opset", "11"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "opset" in err[0]
    with pytest.raises(SystemExit) as e:  # options are not abbreviated, as in every command
        main(["export", str(checkpoint), str(tmp_path / "out"), "--forc"])
    assert e.value.code == 2 and "did you mean --force" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
