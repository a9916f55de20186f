"""The stage drivers end to end on synthetic faces: pretrain -> stage 1 -> stage 2 -> evaluate (tiny, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ferfast.config import TrainConfig, build_config
from ferfast.data import write_synthetic_dataset
from ferfast.data.synthetic import SyntheticFaceConfig
from ferfast.engine.checkpoint import load_checkpoint
from ferfast.engine.stages import (
    evaluate,
    lr_function,
    make_optimizer,
    prepare_data,
    resolve_precision,
    run_pretrain,
    run_stage1,
    run_stage2,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, num_train=56, num_test=21, num_unlabeled=32, num_identities=8,
                            num_unlabeled_identities=4, config=SyntheticFaceConfig(size=32), workers=1)
    return out


def tiny_config(synth, out, **extra):
    return build_config(TrainConfig, overrides={**{
        "data.root": str(synth), "data.format": "synthetic", "data.unlabeled_root": str(synth / "unlabeled"),
        "data.image_size": 32, "data.loader": "torch", "data.num_workers": 0, "data.labeled_fraction": 0.5,
        "model.name": "vit_demo", "model.drop_path": 0.0,
        "run.output_dir": str(out), "run.device": "cpu", "run.tensorboard": False, "run.log_every": 1,
        "pretrain.epochs": 1, "pretrain.batch_size": 16,
        "stage1.epochs": 2, "stage1.batch_size": 8,
        "stage2.epochs": 1, "stage2.batch_size": 8, "stage2.unlabeled_batch_size": 8,
    }, **extra})  # fmt: skip


def test_pretrain_stage1_stage2_evaluate(synth, tmp_path):
    cfg = tiny_config(synth, tmp_path)
    data = prepare_data(cfg)
    assert (tmp_path / "split.json").is_file()
    assert len(data.labeled) == 28 and len(data.unlabeled) == 28  # 8 per class, half kept (max(1, round(p n)))
    ckpt = run_pretrain(cfg)
    assert ckpt.is_file() and "decoder_pred.weight" in load_checkpoint(ckpt)["model"]
    ema1 = run_stage1(cfg, data, pretrained=ckpt)
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


def test_a_second_run_reuses_the_split_file(synth, tmp_path):
    first = prepare_data(tiny_config(synth, tmp_path)).split
    again = prepare_data(tiny_config(synth, tmp_path, **{"data.seed": 5})).split  # same file: the file wins
    fresh = prepare_data(tiny_config(synth, tmp_path / "other", **{"data.seed": 5})).split
    assert first.labeled == again.labeled and fresh.labeled != first.labeled


def test_optimizer_groups_and_schedules():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = build_config(TrainConfig)
    opt, lr = make_optimizer(model, cfg.stage1.optim, 32)
    assert lr == pytest.approx(1.5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1  # only the Linear weight decays
    lr1 = lr_function(cfg.stage1.optim, 100, 1.5e-4)
    assert lr1(0.0) == 0.0 and lr1(5.0) == pytest.approx(1.5e-4) and lr1(100.0) == pytest.approx(1e-6)
    lr2 = lr_function(cfg.stage2.optim, 50, 1.5e-4)
    assert [lr2(e) for e in (0, 19.9, 20, 40)] == pytest.approx([1.5e-4, 1.5e-4, 1.5e-5, 1.5e-6])
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
