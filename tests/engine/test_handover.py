"""Stages hand over (issue 13, item 1): what a stage takes from the checkpoint it starts from, what the user keeps,
and what is an error naming both values; the given-key record it relies on; ``--fresh``'s move aside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferfast.api import make_config
from ferfast.config import TrainConfig, build_config, config_to_dict, given_keys, replace_keys
from ferfast.engine.handover import FROM_PRETRAIN, FROM_STAGE1, check_class_names, hand_over, saved_config
from ferfast.engine.runlock import RunLockedError, move_aside, run_lock

ROOT = Path(__file__).resolve().parents[2]


def _saved(**overrides) -> TrainConfig:
    return build_config(
        TrainConfig,
        overrides={
            "model.name": "vit_demo",
            "data.image_size": 64,
            "data.root": "/data/raf",
            "data.labeled_fraction": 0.1,
            **overrides,
        },
    )


def test_given_keys_are_recorded_by_files_options_and_keywords(tmp_path):
    (tmp_path / "c.yaml").write_text("stage1:\n  epochs: 3\n")
    cfg = build_config(TrainConfig, file=tmp_path / "c.yaml", overrides={"data.seed": 0}, run__seed=1)
    assert given_keys(cfg) == {"stage1.epochs", "data.seed", "run.seed"}  # data.seed given at its default value
    merged = make_config(cfg, data__image_size=64)
    assert given_keys(merged) == {"stage1.epochs", "data.seed", "run.seed", "data.image_size"}
    assert given_keys(replace_keys(merged, {"model.name": "vit_demo"})) == given_keys(merged)  # inherited: not given
    assert given_keys(TrainConfig()) == frozenset()


def test_the_default_model_name_is_a_registered_family():
    from ferfast.config import DEFAULT_MODEL
    from ferfast.models import resolve_model_names

    assert resolve_model_names(DEFAULT_MODEL) == (f"mae_{DEFAULT_MODEL}", DEFAULT_MODEL)


def test_stage1_takes_model_and_image_size_from_the_pretraining():
    cfg = make_config(data__root="/data/raf")
    new, report = hand_over(cfg, _saved(), "mae.pth", FROM_PRETRAIN, "pretrain")
    assert (new.model.name, new.data.image_size) == ("vit_demo", 64)
    assert report.inherited == {"model.name": "vit_demo", "data.image_size": 64}
    assert report.lines() == ["from mae.pth: model.name=vit_demo, data.image_size=64"]
    assert new.data.labeled_fraction == cfg.data.labeled_fraction  # not a pretraining setting


def test_a_given_resolution_wins_over_the_pretrainings_and_is_reported():
    cfg = make_config(data__root="/data/raf", data__image_size=96)
    new, report = hand_over(cfg, _saved(), "mae.pth", FROM_PRETRAIN, "pretrain")
    assert new.data.image_size == 96 and new.model.name == "vit_demo"
    assert report.kept == {"data.image_size": (96, 64)}
    assert "data.image_size=96 as given (the checkpoint was trained with 64)" in report.lines()


@pytest.mark.parametrize(
    "key,value,theirs",
    [
        ("model.name", "vit_small_patch16", "vit_demo"),
        ("data.labeled_fraction", 0.25, "0.1"),
        ("data.seed", 3, "0"),
        ("data.image_size", 96, "64"),
        ("model.global_pool", True, "False"),
    ],
)
def test_stage2_refuses_a_setting_that_contradicts_stage1(key, value, theirs):
    cfg = make_config(overrides={key: value})
    with pytest.raises(Exception) as e:
        hand_over(cfg, _saved(), "runs/x/stage1/checkpoint-last.pth", FROM_STAGE1, "stage1")
    message = str(e.value)
    assert type(e.value).__name__ == "ConfigError" and message.startswith(f"{key}: ")
    assert str(value) in message and theirs in message and "runs/x/stage1/checkpoint-last.pth" in message


def test_stage2_takes_the_dataset_and_split_and_a_given_equal_value_is_fine():
    cfg = make_config(data__labeled_fraction=0.1)  # given, equal to stage 1's
    new, report = hand_over(cfg, _saved(), "s1.pth", FROM_STAGE1, "stage1")
    assert (new.data.root, new.data.labeled_fraction, new.model.name) == (Path("/data/raf"), 0.1, "vit_demo")
    assert "data.labeled_fraction" not in report.inherited and "data.root" in report.inherited


def test_class_names_must_match_stage1s():
    check_class_names(["a", "b"], ["a", "b"], "/data", "s1.pth")
    with pytest.raises(ValueError, match=r"data.root: /data has the classes \['b', 'a'\], but s1.pth"):
        check_class_names(["b", "a"], ["a", "b"], "/data", "s1.pth")


def test_saved_config_reads_ferfast_checkpoints_only():
    args = {**config_to_dict(_saved()), "stage": "pretrain"}
    cfg, stage = saved_config({"model": {}, "args": args})
    assert stage == "pretrain" and cfg.model.name == "vit_demo"
    assert saved_config({"model": {}, "args": {"model": "mae_vit_base_patch16", "epochs": 800}}) is None  # MAE's
    assert saved_config({"model": {}}) is None


def test_move_aside_keeps_everything_and_refuses_a_locked_folder(tmp_path):
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "checkpoint-last.pth").write_bytes(b"weights")
    (tmp_path / "split.json").write_text("{}")
    moved = move_aside([tmp_path / "stage1", tmp_path / "stage2", tmp_path / "split.json"], tmp_path)
    assert moved is not None and moved.parent == tmp_path and moved.name.startswith("previous-")
    assert (moved / "stage1" / "checkpoint-last.pth").read_bytes() == b"weights"
    assert (moved / "split.json").is_file() and not (tmp_path / "stage1").exists()
    assert move_aside([tmp_path / "stage1"], tmp_path) is None  # nothing to move
    (tmp_path / "stage2").mkdir()
    code = (
        "import sys, time; from ferfast.engine.runlock import run_lock\nwith run_lock(sys.argv[1]):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "stage2")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="stage2"):
            move_aside([tmp_path / "stage2"], tmp_path)
        assert (tmp_path / "stage2").is_dir()
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path / "stage2"):  # this process's own lock is re-entrant: not in use by another run
        pass
