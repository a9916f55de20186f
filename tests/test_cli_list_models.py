"""``list-models``, ``--help`` pointing to it, and ``--model.name`` taking either name (issue 13, item 1)."""

from __future__ import annotations

import json

import pytest
import torch

from ferfast.config import ConfigError, ModelConfig, TrainConfig, build_config, config_from_dict, config_to_dict
from ferfast.models import create_model, model_families, resolve_model_names
from ferfast.train import main
from tests.utils import write_tiny_faces


def _table_names(out: str) -> list[tuple[str, str]]:
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["name", "MAE"] and set(lines[1]) <= {"-", " "}
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        rows.append(tuple(line.split()[:2]))
    return rows


def test_list_models_prints_every_family_with_both_names(capsys):
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    rows = _table_names(out)
    assert sorted(r[0] for r in rows) == model_families()
    assert all(mae == f"mae_{vit}" for vit, mae in rows)
    demo = next(line for line in out.splitlines() if line.startswith("vit_demo "))
    assert demo.split()[2:10] == ["128", "4", "4", "8", "64", "64/2/4", "0.83", "0.95"] and "demo" in demo
    base = next(line for line in out.splitlines() if line.startswith("vit_base_patch16 "))
    assert "85.80" in base and "ViT-B/16" in base
    assert "7 classes" in out
    for vit, mae in rows:  # every printed name builds, and is the architecture its row says
        with torch.device("meta"):
            assert create_model(vit, num_classes=7) is not None and create_model(mae) is not None
        assert resolve_model_names(vit) == resolve_model_names(mae) == (mae, vit)


def test_list_models_json_and_num_classes(capsys):
    assert main(["list-models", "--json", "--num-classes", "8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    demo = next(r for r in rows if r["name"] == "vit_demo")
    assert demo["mae_name"] == "mae_vit_demo" and demo["embed_dim"] == 128 and demo["decoder"] == [64, 2, 4]
    vit = create_model("vit_demo", num_classes=8)
    assert demo["params_m"] == pytest.approx(sum(p.numel() for p in vit.parameters()) / 1e6)


def test_help_points_to_list_models(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "list-models" in out and "mae_vit_demo" in out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--model.name" in out and "list-models" in out and "mae_vit_demo" in out
    assert "list-models" in ModelConfig.__dataclass_fields__["name"].metadata["help"]


@pytest.mark.parametrize("name", ["vit_demo", "mae_vit_demo"])
def test_config_accepts_both_forms_and_records_the_family(name):
    cfg = build_config(TrainConfig, model__name=name)
    assert cfg.model.name == "vit_demo"
    assert config_from_dict(TrainConfig, config_to_dict(cfg)).model.name == "vit_demo"
    assert ModelConfig(name=name).name == "vit_demo"


def test_config_rejects_an_unknown_name_naming_the_key():
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, model__name="mae_mae_vit_demo")
    assert e.value.key == "model.name" and "did you mean 'vit_demo'" in str(e.value) and "list-models" in str(e.value)


def test_cli_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--model.name", "vit_dmeo"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--model.name" in err and "did you mean 'vit_demo'" in err


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_tiny_faces(
        tmp_path_factory.mktemp("synth"),
        num_train=14,
        num_test=7,
        num_unlabeled=16,
        num_identities=7,
        num_unlabeled_identities=2,
    )


@pytest.mark.parametrize("name", ["mae_vit_demo", "vit_demo"])
def test_pretrain_takes_the_readme_name(synth, tmp_path, name):
    """``pretrain --model.name mae_vit_demo`` (the README's) failed: ``unknown model name 'mae_mae_vit_demo'``."""
    out = tmp_path / "run"
    args = [
        "pretrain",
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
        "--model.name",
        name,
        "--run.output_dir",
        str(out),
        "--run.device",
        "cpu",
        "--run.tensorboard",
        "false",
        "--pretrain.epochs",
        "1",
        "--pretrain.batch_size",
        "8",
    ]
    assert main(args) == 0
    ckpts = list(out.rglob("checkpoint-last.pth"))
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert state["args"]["model"]["name"] == "vit_demo"
