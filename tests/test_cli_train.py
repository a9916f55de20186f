"""The pipeline from the command line and the Python API: pretrain -> finetune -> semisup -> evaluate (tiny, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import ferfast
from ferfast.train import main
from tests.utils import write_tiny_faces


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_tiny_faces(tmp_path_factory.mktemp("synth"))


def tiny(synth, out) -> list[str]:
    return [
        "--data.root",
        str(synth),
        "--data.unlabeled_root",
        str(synth / "unlabeled"),
        "--data.image_size",
        "32",
        "--data.loader",
        "torch",
        "--data.num_workers",
        "0",
        "--data.labeled_fraction",
        "0.5",
        "--model.name",
        "vit_demo",
        "--model.drop_path",
        "0",
        "--run.output_dir",
        str(out),
        "--run.device",
        "cpu",
        "--run.tensorboard",
        "false",
    ]


def test_cli_runs_every_stage(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny(synth, out), "--pretrain.epochs", "1", "--pretrain.batch_size", "16"]) == 0
    ckpt = out / "pretrain" / "checkpoint-last.pth"
    assert ckpt.is_file()
    assert (
        main(
            [
                "finetune",
                *tiny(synth, out),
                "--model.pretrained",
                str(ckpt),
                "--stage1.epochs",
                "1",
                "--stage1.batch_size",
                "8",
            ]
        )
        == 0
    )
    assert "stage1: test accuracy" in capsys.readouterr().out
    assert (
        main(
            [
                "semisup",
                *tiny(synth, out),
                "--stage2.epochs",
                "1",
                "--stage2.batch_size",
                "8",
                "--stage2.unlabeled_batch_size",
                "8",
            ]
        )
        == 0
    )
    assert (out / "stage2" / "eval" / "confusion.png").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(out / "stage2" / "checkpoint-last.pth")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[: printed.rindex("}") + 1])
    assert set(metrics) == {"accuracy", "mean_class_accuracy", "macro_f1"} and 0 <= metrics["accuracy"] <= 1


def test_cli_bad_values_name_the_option(synth, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", *tiny(synth, tmp_path), "--stage1.epochs", "zero"])
    assert e.value.code == 2 and "stage1.epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["finetune", "--stage2.threshold", "0.5"])  # a stage-2 option is not one of finetune's
    assert main(["evaluate", str(tmp_path / "missing.pth")]) == 1  # a missing file: a runtime failure
    assert "missing.pth" in capsys.readouterr().err


def test_help_lists_the_commands_in_a_real_process():
    cmd = [sys.executable, "-m", "ferfast.train", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("pretrain", "finetune", "semisup", "evaluate", "data"):
        assert command in done.stdout


def test_finetune_under_torchrun_with_two_processes(synth, tmp_path):
    from ferfast.engine import load_checkpoint
    from ferfast.engine.loop import RANK_RNG_KEY
    from tests.engine.test_dist import free_port

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "ferfast.train",
        "finetune",
        *tiny(synth, out),
        "--stage1.epochs",
        "1",
        "--stage1.batch_size",
        "4",
        "--run.log_every",
        "1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stage1: test accuracy") == 1  # only rank 0 prints
    lines = [json.loads(line) for line in (out / "stage1" / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 3  # 28 images / (4 x 2 ranks) = 3 steps, the last in the epoch record; rank 0 alone
    assert len(load_checkpoint(out / "stage1" / "checkpoint-last.pth")[RANK_RNG_KEY]) == 2
    assert (out / "stage1" / "config.yaml").is_file() and (out / "stage1" / "eval" / "metrics.json").is_file()


def test_python_api_finetune_and_load_model(synth, tmp_path):
    result = ferfast.finetune(
        stages=("stage1",),
        data__root=str(synth),
        data__image_size=32,
        data__loader="torch",
        data__num_workers=0,
        data__labeled_fraction=0.5,
        model__name="vit_demo",
        run__output_dir=str(tmp_path),
        run__device="cpu",
        run__tensorboard=False,
        stage1__epochs=1,
        stage1__batch_size=8,
    )
    assert result["checkpoint"].is_file() and len(result["class_names"]) == 7
    model, names = ferfast.load_model(result["checkpoint"])
    assert names == result["class_names"]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    again = ferfast.evaluate(result["checkpoint"])
    assert again["accuracy"] == pytest.approx(result["metrics"]["accuracy"])  # the EMA weights, evaluated again
    with pytest.raises(ValueError, match="stages"):
        ferfast.finetune(stages=("stage3",))


def test_predict_matches_the_evaluation_view_and_finds_faces(synth, tmp_path, capsys):
    from ferfast.data import build_loader, open_dataset
    from ferfast.data.augment import AugmentConfig
    from ferfast.data.normalize import normalize_images

    result = ferfast.finetune(
        stages=("stage1",),
        data__root=str(synth),
        data__image_size=32,
        data__loader="torch",
        data__num_workers=0,
        data__labeled_fraction=0.5,
        model__name="vit_demo",
        run__output_dir=str(tmp_path),
        run__device="cpu",
        run__tensorboard=False,
        stage1__epochs=1,
        stage1__batch_size=8,
    )
    test = open_dataset("synthetic", synth, "test")
    files = [test.path(i) for i in range(6)]
    plain = ferfast.predict(result["checkpoint"], files, detect=False)
    model, names = ferfast.load_model(result["checkpoint"])
    (batch,) = list(
        build_loader(
            "eval",
            test.subset(range(6)),
            backend="torch",
            batch_size=6,
            num_workers=0,
            config=AugmentConfig(image_size=32),
        )
    )
    with torch.no_grad():  # the loaders' images (uint8, or floats already normalised), normalised as training does
        expected = model(normalize_images(batch["images"])).softmax(-1)
    for r, p in zip(plain, expected):
        assert r["box"] is None and r["label"] == names[int(p.argmax())]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(torch.tensor([r["probabilities"][n] for n in names]), p, atol=1e-5, rtol=0)
    detected = ferfast.predict(result["checkpoint"], files, detect=True)
    assert all(r["label"] in names for r in detected)
    assert main(["predict", str(result["checkpoint"]), str(files[0]), "--no-detect"]) == 0
    assert f"{files[0]}: {plain[0]['label']}" in capsys.readouterr().out
    assert main(["predict", str(result["checkpoint"]), str(tmp_path / "nope.jpg")]) == 1
    assert "nope.jpg" in capsys.readouterr().err
