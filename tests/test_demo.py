"""The demo: each arm's config, the table, bad options, and the quick run end to end from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ferfast.config import ConfigError
from ferfast.demo import ARMS, DEMO_RECIPE, ArmResult, DemoConfig, DemoResult, arm_config, check_config, format_table
from ferfast.demo_plots import RESULTS_SIZE, reconstruction_grid_size
from ferfast.train import main

ARM = {a.key: a for a in ARMS}


def test_each_arm_switches_only_its_parts(tmp_path):
    cfg = DemoConfig(out_dir=tmp_path, seeds=(3,))
    mae = tmp_path / "mae.pth"
    scratch = arm_config(cfg, ARM["scratch"], 3, None)
    pretrain = arm_config(cfg, ARM["pretrain"], 3, mae)
    mixup = arm_config(cfg, ARM["mixup"], 3, mae)
    full = arm_config(cfg, ARM["full"], 3, mae)
    assert scratch.model.pretrained is None and not scratch.stage1.mixup and scratch.stage1.optim.layer_decay is None
    assert pretrain.model.pretrained == mae and not pretrain.stage1.mixup and pretrain.stage1.optim.layer_decay == 0.75
    assert mixup.stage1.mixup and mixup.model.pretrained == mae
    # the 5% arms share one split file; the ceiling keeps every label
    assert scratch.data.split_file == pretrain.data.split_file == mixup.data.split_file is not None
    assert scratch.data.labeled_fraction == 0.05 and full.data.labeled_fraction == 1.0 and not full.stage1.mixup
    # everything else is the same recipe, seeded by the seed
    for c in (scratch, pretrain, mixup, full):
        same = (3, 3, DEMO_RECIPE["model.name"], scratch.stage1.epochs)
        assert (c.run.seed, c.data.seed, c.model.name, c.stage1.epochs) == same
    assert len({c.run.output_dir for c in (scratch, pretrain, mixup, full)}) == 4


def test_overrides_reach_every_arm_and_bad_ones_are_named(tmp_path):
    cfg = DemoConfig(out_dir=tmp_path, overrides={"stage1.epochs": "7", "pretrain__epochs": 2})
    assert all(arm_config(cfg, a, 0, None).stage1.epochs == 7 for a in ARMS)
    with pytest.raises(ValueError, match=r"stage1\.epoch"):
        DemoConfig(overrides={"stage1.epoch": 3})
    with pytest.raises(ConfigError, match=r"stage1\.epochs"):
        check_config(DemoConfig(out_dir=tmp_path, overrides={"stage1.epochs": "zero"}))
    with pytest.raises(ValueError, match="seeds"):
        DemoConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="mixup"):
        DemoConfig(arms=("scratch", "semisup"))


def _row(arm: str, seed: int, acc: float) -> ArmResult:
    return ArmResult(arm, seed, acc, acc - 0.01, acc - 0.02, 10.0 + seed, 300)


def test_table_reports_each_seed_the_mean_and_the_story():
    accs = {
        "scratch": (0.15, 0.17),
        "pretrain": (0.45, 0.47),
        "mixup": (0.50, 0.48),
        "semisup": (0.60, 0.62),
        "full": (0.70, 0.72),
    }
    rows = [_row(arm, seed, a[i]) for arm, a in accs.items() for i, seed in enumerate((0, 1))]
    result = DemoResult(rows, {"data": 1.0, "total": 99.0}, {}, (0, 1), 0.05)
    assert result.mean("semisup") == pytest.approx(0.61)
    table = format_table(result)
    assert "| + FixMatch (full method) | 5% | 60.0% | 59.0% | 62.0% | 61.0% | 61.0% | 60.0% | 10 s |" in table
    assert "| fully supervised (ceiling) | 100% |" in table
    assert "MAE pretraining +30.0, face-IoU Mixup +3.0, FixMatch +12.0" in table
    assert "full method vs supervised from scratch: +45.0 points" in table
    assert "reaches 85.9% of the fully supervised accuracy (s0 85.7%, s1 86.1%)" in table


def test_bad_demo_options_name_the_option(capsys):
    for argv, option in (
        (["--seeds", "a"], "--seeds"),
        (["--set", "stage1.epochs"], "--set"),
        (["--arms", "scratch,nope"], "--arms"),
        (["--labeled-fraction", "2"], "--labeled-fraction"),
        (["--set", "stage1.epochs=zero"], "--set"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["demo", *argv])
        assert e.value.code == 2 and option in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_from_the_command_line(tmp_path):
    """The CLI smoke test: ``python -m ferfast.train demo --quick`` runs every stage and prints the table."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ferfast.train", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for arm in ARMS:
        assert f"| {arm.label} |" in out
    assert "wall time: data" in out and "full method vs supervised from scratch" in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert {r["arm"] for r in result["rows"]} == {a.key for a in ARMS}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in result["rows"])
    labeled = {r["arm"]: r["labeled"] for r in result["rows"]}
    assert labeled["full"] == result["data"]["num_train"] and labeled["scratch"] < labeled["full"] / 10
    for arm in ARMS:  # each arm evaluated through the real pipeline: metrics and confusion matrix on disk
        assert (tmp_path / "seed0" / arm.key / "eval" / "confusion.png").is_file()
    assert (Path(result["data"]["faces_dir"]) / "synthetic.json").is_file()
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("SSFER ablation")
    # the pictures: the chart after the table, the MAE's reconstructions, the confusion matrices evaluate wrote
    links = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", md, flags=re.MULTILINE)
    confusions = [f"seed0/{arm.key}/eval/confusion.png" for arm in ARMS]
    assert links == ["results.png", "seed0/reconstruction.png", *confusions]
    assert md.index("![") > md.index("| fully supervised (ceiling) |")
    assert all((tmp_path / link).is_file() for link in links)
    assert sorted(result["pictures"].values()) == sorted(links)
    assert "pictures: results.png, seed0/reconstruction.png" in out
    with Image.open(tmp_path / "results.png") as im:
        assert im.format == "PNG" and im.size == RESULTS_SIZE
    with Image.open(tmp_path / "seed0" / "reconstruction.png") as im:  # 6 test faces of 32x32, shown x4
        assert im.format == "PNG" and im.size == reconstruction_grid_size(6, 32, 4)
    # face-IoU Mixup's pair IoUs after stage 1's crops, measured on the stage's own loader: printed and recorded
    iou = result["pair_iou"]["0"]
    assert 0.0 < iou["q25"] <= iou["median"] <= iou["q75"] <= 1.0 and 0.0 < iou["mean"] < 1.0
    assert iou["draws"] == 5 * (labeled["mixup"] // 8 * 8)  # 5 epochs of the quick recipe's full batches of 8
    assert f"face-IoU Mixup pairs after stage 1's crops: IoU mean {iou['mean']:.2f}" in out
    assert f"face-IoU Mixup pair IoU after stage 1's crops (seed 0): mean {iou['mean']:.2f}" in md


def test_the_demo_trains_in_fp32_on_the_cpu(tmp_path):
    """Its documented results are fp32's: run.precision=auto could measure bf16 faster on a CPU with bf16 units."""
    assert arm_config(DemoConfig(out_dir=tmp_path, device="cpu"), ARM["full"], 0, None).run.precision == "fp32"
    assert arm_config(DemoConfig(out_dir=tmp_path, device="cuda"), ARM["full"], 0, None).run.precision == "auto"
    pinned = DemoConfig(out_dir=tmp_path, device="cpu", overrides={"run.precision": "bf16"})
    assert arm_config(pinned, ARM["mixup"], 0, None).run.precision == "bf16"  # an override still wins
