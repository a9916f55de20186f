"""The stage drivers end to end on synthetic faces: pretrain -> stage 1 -> stage 2 -> evaluate (tiny, CPU), and
the settings they wire up: resume, validation and the best checkpoint, MAE's decoder, fp16, compile (the optimizer
and its schedule: tests/engine/test_optim.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ferfast.config import ConfigError, TrainConfig, build_config
from ferfast.data.splits import SplitMismatchError
from ferfast.engine import evaluation, stage_data, stages
from ferfast.engine.checkpoint import BEST_CHECKPOINT, load_checkpoint
from ferfast.engine.evaluation import evaluate
from ferfast.engine.runlock import LOCK_FILE, RunLockedError
from ferfast.engine.stage_data import prepare_data
from ferfast.engine.stages import build_classifier, build_mae, build_mixup, run_pretrain, run_stage1, run_stage2
from tests.engine.test_runlock import hold
from tests.utils import write_tiny_faces


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_tiny_faces(tmp_path_factory.mktemp("synth"))


def tiny_config(synth, out, **extra):
    return build_config(
        TrainConfig,
        overrides={
            **{
                "data.root": str(synth),
                "data.format": "synthetic",
                "data.unlabeled_root": str(synth / "unlabeled"),
                "data.image_size": 32,
                "data.loader": "torch",
                "data.num_workers": 0,
                "data.labeled_fraction": 0.5,
                "model.name": "vit_demo",
                "model.drop_path": 0.0,
                "run.output_dir": str(out),
                "run.device": "cpu",
                "run.tensorboard": False,
                "run.log_every": 1,
                "run.precision": "fp32",  # "auto" measures bf16 against fp32 on CPUs with bf16 units: runs could differ
                "pretrain.epochs": 1,
                "pretrain.batch_size": 16,
                "stage1.epochs": 2,
                "stage1.batch_size": 8,
                "stage2.epochs": 1,
                "stage2.batch_size": 8,
                "stage2.unlabeled_batch_size": 8,
            },
            **extra,
        },
    )


def test_pretrain_stage1_stage2_evaluate(synth, tmp_path):
    cfg = tiny_config(synth, tmp_path)
    data = prepare_data(cfg)
    assert not (tmp_path / "split.json").exists()  # written by the first stage that trains on it
    assert len(data.labeled) == 28 and len(data.unlabeled) == 28  # 8 per class, half kept (max(1, round(p n)))
    ckpt = run_pretrain(cfg)
    assert ckpt.is_file() and "decoder_pred.weight" in load_checkpoint(ckpt)["model"]
    ema1 = run_stage1(cfg, data, pretrained=ckpt)
    assert prepare_data(cfg).split == data.split and data.pending_split_file is None  # now from split.json
    stage1 = load_checkpoint(tmp_path / "stage1" / "checkpoint-last.pth")
    assert stage1["epoch"] == 1 and stage1["class_names"] == list(data.class_names)
    assert stage1["args"]["stage1"]["epochs"] == 2  # the config travels inside the checkpoint
    teacher = run_stage2(cfg, data, ema1.module)
    lines = (tmp_path / "stage2" / "log.jsonl").read_text().splitlines()
    assert any("mask_rate" in json.loads(line) for line in lines)
    result = evaluate(teacher.module, data.test, cfg, tmp_path / "eval")
    assert 0.0 <= result["accuracy"] <= 1.0 and len(result["confusion"]) == 7
    assert sum(map(sum, result["confusion"])) == len(data.test)
    assert Image.open(tmp_path / "eval" / "confusion.png").size[0] > 100
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["class_names"] == list(data.class_names)


def test_a_second_run_reuses_the_split_file_only_when_it_matches(synth, tmp_path):
    data = prepare_data(tiny_config(synth, tmp_path, **{"data.labeled_fraction": 0.25}))
    assert data.write_split() == tmp_path / "split.json" and data.write_split() is None  # written once
    first, before = data.split, (tmp_path / "split.json").read_text()
    again = prepare_data(tiny_config(synth, tmp_path, **{"data.labeled_fraction": 0.25}))
    assert again.split == first and again.pending_split_file is None  # the same file, the same indices
    with pytest.raises(
        SplitMismatchError,
        match=r"split\.json was drawn with labeled fraction 0\.25 \(this run: "
        r"data\.labeled_fraction=0\.1\)",
    ):
        prepare_data(tiny_config(synth, tmp_path, **{"data.labeled_fraction": 0.1}))
    with pytest.raises(SplitMismatchError, match=r"seed 0 \(this run: data\.seed=5\)"):
        prepare_data(tiny_config(synth, tmp_path, **{"data.labeled_fraction": 0.25, "data.seed": 5}))
    assert (tmp_path / "split.json").read_text() == before  # a refused run leaves the file alone
    fresh = prepare_data(tiny_config(synth, tmp_path / "other", **{"data.seed": 5})).split
    assert fresh.labeled != first.labeled and fresh.seed == 5


def test_a_split_written_meanwhile_is_reused_only_if_it_is_the_same(synth, tmp_path):
    ours = prepare_data(tiny_config(synth, tmp_path, **{"data.labeled_fraction": 0.25}))
    theirs = prepare_data(tiny_config(synth, tmp_path, **{"data.labeled_fraction": 0.1}))  # another run, same folder
    same = prepare_data(tiny_config(synth, tmp_path, **{"data.labeled_fraction": 0.25}))
    theirs.write_split()
    with pytest.raises(SplitMismatchError, match=r"fraction 0\.1 \(this run: data\.labeled_fraction=0\.25\)"):
        ours.write_split()  # never replaces the other run's file
    assert json.loads((tmp_path / "split.json").read_text())["fraction"] == 0.1
    (tmp_path / "split.json").unlink()
    ours.pending_split_file = same.pending_split_file = tmp_path / "split.json"
    ours.write_split()
    assert same.write_split() == tmp_path / "split.json"  # the same split: fine


def test_a_bad_data_root_writes_nothing(synth, tmp_path):
    import ferfast

    out = tmp_path / "run"
    cfg = tiny_config(synth, out, **{"data.root": str(tmp_path / "missing"), "data.format": "auto"})
    with pytest.raises((FileNotFoundError, ValueError)):
        ferfast.finetune(cfg, stages=("stage1",))
    cfg = tiny_config(synth, out, **{"data.unlabeled_root": str(tmp_path / "missing")})
    with pytest.raises((FileNotFoundError, ValueError)):
        ferfast.pretrain(cfg)
    assert not out.exists()  # no split.json, no config.yaml, no empty stage folder


def test_a_stage_refuses_a_folder_another_process_holds(synth, tmp_path):
    cfg = tiny_config(synth, tmp_path, **{"stage1.epochs": 1})
    data = prepare_data(cfg)
    proc = hold(tmp_path / "stage1")
    try:
        with pytest.raises(RunLockedError, match=f"stage1 is in use: locked by pid {proc.pid} on host"):
            run_stage1(cfg, data)
        assert sorted(p.name for p in (tmp_path / "stage1").iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    run_stage1(cfg, data)  # the killed holder left no lock
    stage1 = tmp_path / "stage1"
    assert not (stage1 / LOCK_FILE).exists() and (stage1 / "checkpoint-last.pth").is_file()
    assert build_config(TrainConfig, file=stage1 / "config.yaml") == cfg  # each stage its own config.yaml
    assert not (tmp_path / "config.yaml").exists()


def test_the_decoder_settings_replace_the_models_own(synth, tmp_path):
    demo = build_mae(tiny_config(synth, tmp_path))
    assert (demo.decoder_embed.out_features, len(demo.decoder_blocks)) == (64, 2)  # mae_vit_demo's 64/2/4
    small = build_mae(
        tiny_config(
            synth,
            tmp_path,
            **{"pretrain.decoder_embed_dim": 32, "pretrain.decoder_depth": 1, "pretrain.decoder_num_heads": 2},
        )
    )
    assert (small.decoder_embed.out_features, len(small.decoder_blocks)) == (32, 1)
    assert small.decoder_blocks[0].attn.num_heads == 2


def test_model_num_classes_must_match_the_dataset(synth, tmp_path):
    data = prepare_data(tiny_config(synth, tmp_path))
    assert build_classifier(tiny_config(synth, tmp_path, **{"model.num_classes": 7}), 7).head.out_features == 7
    with pytest.raises(ConfigError, match=r"model\.num_classes: is 5, but the dataset has 7 classes"):
        run_stage1(tiny_config(synth, tmp_path, **{"model.num_classes": 5}), data)


def test_a_multi_process_launch_without_a_process_group_is_refused(synth, tmp_path, monkeypatch):
    data = prepare_data(tiny_config(synth, tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's, but nobody called init_distributed()
    with pytest.raises(RuntimeError, match="init_distributed"):
        run_stage1(tiny_config(synth, tmp_path), data)


def test_mixup_pairing_reaches_face_iou_mixup(synth, tmp_path):
    assert build_mixup(tiny_config(synth, tmp_path), 7).pairing == "flip"
    mixup = build_mixup(tiny_config(synth, tmp_path, **{"stage1.mixup_pairing": "random"}), 7)
    perm = mixup({"images": torch.randn(16, 3, 4, 4), "labels": torch.zeros(16, dtype=torch.long)}).perm
    assert mixup.pairing == "random" and sorted(perm.tolist()) == list(range(16))
    assert perm.tolist() != list(range(15, -1, -1))


def constant_lr(synth, out, **extra):
    return tiny_config(synth, out, **{"stage1.optim.schedule": "constant", "stage1.optim.warmup_epochs": 0, **extra})


def epoch_records(log):
    return [r for r in map(json.loads, log.read_text().splitlines()) if "time_s" in r]


def test_run_resume_continues_an_explicit_checkpoint_unless_the_run_has_its_own(synth, tmp_path):
    data = prepare_data(tiny_config(synth, tmp_path))
    full = run_stage1(constant_lr(synth, tmp_path / "full"), data)
    run_stage1(constant_lr(synth, tmp_path / "first", **{"stage1.epochs": 1}), data)
    source = tmp_path / "first" / "stage1" / "checkpoint-last.pth"
    resumed = run_stage1(constant_lr(synth, tmp_path / "new", **{"run.resume": str(source)}), data)
    for name, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    log = tmp_path / "new" / "stage1" / "log.jsonl"
    assert [r["epoch"] for r in epoch_records(log)] == [2]  # epoch 1 came from the checkpoint
    run_stage1(constant_lr(synth, tmp_path / "new", **{"run.resume": str(source)}), data)
    assert [r["epoch"] for r in epoch_records(log)] == [2]  # its own checkpoint-last.pth (the last epoch) won
    with pytest.raises(ConfigError, match=r"run\.resume: checkpoint not found"):
        run_stage1(tiny_config(synth, tmp_path / "x", **{"run.resume": str(tmp_path / "missing.pth")}), data)


def test_stage1_evaluates_on_the_val_split_and_keeps_the_best(synth, tmp_path):
    cfg = tiny_config(synth, tmp_path, **{"data.val_split": "train"})
    data = prepare_data(cfg)
    assert data.validation is data.val and len(data.val) == 56
    ema = run_stage1(cfg, data)
    records = epoch_records(tmp_path / "stage1" / "log.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and all("val_mean_class_accuracy" in r for r in records)
    assert records[-1]["val_accuracy"] == pytest.approx(evaluate(ema.module, data.train, cfg)["accuracy"])
    best = load_checkpoint(tmp_path / "stage1" / BEST_CHECKPOINT)
    assert best["best"]["value"] == max(r["val_accuracy"] for r in records)


def test_fp16_precision_saves_its_grad_scaler(synth, tmp_path):
    cfg = tiny_config(synth, tmp_path, **{"run.precision": "fp16", "stage1.epochs": 1})
    run_stage1(cfg, prepare_data(cfg))
    ckpt = load_checkpoint(tmp_path / "stage1" / "checkpoint-last.pth")
    assert ckpt["scaler"]["scale"] > 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_run_compile_compiles_the_trained_model(synth, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):  # dynamo's tracing, without inductor's slow first compile
        compiled.append((type(model).__name__, kwargs.get("backend"), kwargs.get("mode")))
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = tiny_config(synth, tmp_path, **{"run.compile": True, "run.compile_mode": "max-autotune", "stage1.epochs": 1})
    run_stage1(cfg, prepare_data(cfg))
    assert compiled == [("VisionTransformer", "inductor", "max-autotune")]
    saved = load_checkpoint(tmp_path / "stage1" / "checkpoint-last.pth")["model"]
    assert not any(k.startswith("_orig_mod") for k in saved)


def test_loaders_pin_their_batches_for_cuda_and_take_the_dali_device(synth, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(stage_data, "build_loader", lambda stage, dataset, **kw: calls.append((stage, kw)) or "loader")
    cfg = tiny_config(synth, tmp_path, **{"data.dali_device": "cpu"})
    data = prepare_data(cfg)
    for device in ("cuda", "cpu"):  # a device object needs no GPU: only the settings are checked
        assert stage_data.stage_loader("stage1", data.labeled, cfg, torch.device(device), batch_size=8) == "loader"
    assert [(kw["pin_memory"], kw["device"], kw["backend"]) for _, kw in calls] == [
        (True, "cpu", "torch"),
        (False, "cpu", "torch"),
    ]
    calls.clear()
    evaluation._eval_loader(data.test, cfg)  # run.device is cpu here
    assert calls[0][0] == "eval" and calls[0][1]["pin_memory"] is False
    with pytest.raises(ConfigError, match=r"data\.dali_device: is gpu, but data\.loader is torch"):
        stage_data.stage_loader(
            "stage1",
            data.labeled,
            tiny_config(synth, tmp_path, **{"data.dali_device": "gpu"}),
            torch.device("cpu"),
            batch_size=8,
        )


def _without_boxes(data):
    """``data`` with every training image's face box unknown (NaN rows), as a dataset without annotations."""
    train = data.train.subset(range(len(data.train)))
    train.boxes = np.full_like(train.boxes, np.nan)
    return dataclasses.replace(data, train=train)


def test_stage1_warns_when_face_iou_mixup_has_no_face_boxes(synth, tmp_path, monkeypatch):
    """Without boxes every IoU is 1 and the real images' loss term vanishes: run_stage1 says so once at start-up,
    naming the root and the `data detect` command; not when the boxes are there, nor with Mixup off."""
    monkeypatch.setattr(stages, "fit", lambda *args, **kwargs: None)  # the check is at start-up: no training needed
    cfg = tiny_config(synth, tmp_path)
    data = prepare_data(cfg)
    assert np.isfinite(data.labeled.boxes).all()  # the synthetic faces come with their boxes
    with pytest.warns(UserWarning, match="face-IoU Mixup") as caught:
        run_stage1(cfg, _without_boxes(data))
    messages = [str(w.message) for w in caught if "face-IoU Mixup" in str(w.message)]
    assert len(messages) == 1, messages
    assert f"none of the {len(data.labeled)} labeled images of {synth} has a face box" in messages[0]
    assert f"python -m ferfast.train data detect {synth} --format synthetic" in messages[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*face-IoU Mixup")
        run_stage1(cfg, data)  # boxes known
        run_stage1(tiny_config(synth, tmp_path, **{"stage1.mixup": False}), _without_boxes(data))
    partial = _without_boxes(data)
    partial.train.boxes[data.split.labeled[0]] = data.train.boxes[data.split.labeled[0]]
    assert not stage_data.warn_without_face_boxes(cfg, partial.labeled)  # one known face: the detector found some
