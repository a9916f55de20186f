"""Training configs: SSFER's recipes as defaults, YAML/TOML files, precedence, typed overrides, errors, argparse."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest
import torch
import yaml

from ferfast.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    Stage1Config,
    Stage2Config,
    TrainConfig,
    add_config_arguments,
    build_config,
    config_from_args,
    config_from_dict,
    config_keys,
    config_to_dict,
    load_config,
    save_config,
)
from ferfast.data.augment import FACE_MEAN, AugmentConfig, RandAugmentConfig
from ferfast.data.formats import FORMATS

# -- defaults = the recipes of docs/design.md ------------------------------------------------------


def test_defaults_are_the_papers_recipes():
    cfg = TrainConfig()
    pre, s1, s2 = cfg.pretrain, cfg.stage1, cfg.stage2
    # Pretrain: MAE ViT-B/16, mask 0.75, AdamW(0.9, 0.95; wd 0.05), lr 3.4e-4 at batch 256 (linear scaling), 50 warmup
    assert cfg.model.name == "vit_base_patch16" and cfg.data.image_size == 224
    assert pre.mask_ratio == 0.75 and pre.norm_pix_loss
    assert (pre.decoder_embed_dim, pre.decoder_depth, pre.decoder_num_heads) == (None, None, None)  # the model's own
    assert (pre.optim.betas, pre.optim.weight_decay) == ((0.9, 0.95), 0.05)
    assert pre.optim.lr is None and pre.optim.effective_lr(256) == pytest.approx(3.4e-4)
    assert pre.optim.effective_lr(512) == pytest.approx(6.8e-4)
    assert (pre.optim.warmup_epochs, pre.optim.schedule) == (50, "cosine")
    # Stage 1: 100 epochs, batch 32, AdamW 1.5e-4, cosine with 5 warmup, EMA 0.999, smoothing 0.1, Mixup alpha 1
    assert (s1.epochs, s1.batch_size) == (100, 32)
    assert s1.optim.effective_lr(32) == pytest.approx(1.5e-4) and s1.optim.effective_lr(4096) == pytest.approx(1.5e-4)
    assert (s1.optim.betas, s1.optim.weight_decay) == ((0.9, 0.95), 0.05)
    assert (s1.optim.schedule, s1.optim.warmup_epochs) == ("cosine", 5)
    assert (s1.ema_decay, s1.label_smoothing, s1.mixup_alpha) == (0.999, 0.1, 1.0)
    assert s1.mixup and s1.mixup_pairing == "flip" and s1.fallback_box == (25, 25, 220, 220)
    assert s1.ssfer_compat is False
    # Stage 2: 50 epochs, 64 + 64, EMA teacher 0.999, threshold 0.7, weight 5, AdamW 1.5e-4, x0.1 at 20 and 40
    assert (s2.epochs, s2.batch_size, s2.unlabeled_batch_size) == (50, 64, 64)
    assert (s2.ema_decay, s2.threshold, s2.unlabeled_weight) == (0.999, 0.7, 5.0)
    assert s2.optim.effective_lr(64) == pytest.approx(1.5e-4)
    assert (s2.optim.schedule, s2.optim.milestones, s2.optim.gamma) == ("step", (20, 40), 0.1)
    assert s2.rand_augment() == RandAugmentConfig(num_ops=2, magnitude=9.0, magnitude_std=0.5)
    # Augmentation: RandomResizedCrop(224, scale 0.2-1) + flip, face statistics; bf16 autocast on GPU by default
    aug = cfg.data.augment()
    assert isinstance(aug, AugmentConfig) and (aug.image_size, aug.scale, aug.flip_prob) == (224, (0.2, 1.0), 0.5)
    assert aug.mean == FACE_MEAN
    assert (cfg.run.precision, cfg.run.device, cfg.run.compile, cfg.run.nonfinite) == ("auto", "auto", False, "stop")
    assert (cfg.run.compile_mode, cfg.data.dali_device) == ("default", "auto")


def test_format_choices_match_the_dataset_formats():
    choices = typing.get_args(typing.get_type_hints(DataConfig)["format"])
    assert set(choices) == {"auto", *FORMATS}
    for fmt in FORMATS:
        assert build_config(TrainConfig, overrides=[f"--data.format={fmt}"]).data.format == fmt


def test_every_field_has_help_and_every_key_is_listed():
    keys = config_keys(TrainConfig)
    assert "stage1.optim.lr" in keys and "data.root" in keys and "run.precision" in keys
    assert len(keys) == len(set(keys))
    sections = [TrainConfig, OptimConfig, *typing.get_type_hints(TrainConfig).values()]
    for cls in sections:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


# -- files ----------------------------------------------------------------------------------------------


YAML_TEXT = """\
data:
  root: /data/raf
  labeled_fraction: 0.05
stage1:
  epochs: 7
  optim:
    lr: 3e-4            # PyYAML reads this as a string; it is converted to a float
    betas: [0.8, 0.99]
stage2.threshold: 0.9   # dotted keys work too
"""

TOML_TEXT = """\
[data]
root = "/data/raf"
labeled_fraction = 0.05

[stage1]
epochs = 7

[stage1.optim]
lr = 3e-4
betas = [0.8, 0.99]

[stage2]
threshold = 0.9
"""


@pytest.mark.parametrize(("name", "text"), [("cfg.yaml", YAML_TEXT), ("cfg.yml", YAML_TEXT), ("cfg.toml", TOML_TEXT)])
def test_yaml_and_toml_files_load(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert load_config(path)["data"]["labeled_fraction"] == 0.05
    cfg = build_config(TrainConfig, file=path)
    assert cfg.data.root == Path("/data/raf") and cfg.data.labeled_fraction == 0.05
    assert cfg.stage1.epochs == 7 and cfg.stage1.optim.lr == 3e-4 and cfg.stage1.optim.betas == (0.8, 0.99)
    assert cfg.stage2.threshold == 0.9
    # untouched values keep the stage's own defaults, not OptimConfig's
    assert cfg.stage1.optim.warmup_epochs == 5 and cfg.stage2.optim.milestones == (20, 40)


def test_empty_file_gives_defaults_and_bad_files_are_named(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert build_config(TrainConfig, file=empty) == TrainConfig()
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        build_config(TrainConfig, file=missing)
    for name, text in [("bad.yaml", "data: [1, 2"), ("bad.toml", "[data\nroot ="), ("list.yaml", "- 1\n- 2\n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name):
            load_config(tmp_path / name)
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        load_config(tmp_path / "cfg.json")


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("stage1:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"stage1\.epoch: .*typo\.yaml.*did you mean stage1\.epochs") as info:
        build_config(TrainConfig, file=path)
    assert info.value.key == "stage1.epoch"


# -- precedence -----------------------------------------------------------------------------------------


def test_precedence_defaults_file_kwargs_overrides(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.toml"
    first.write_text("stage1: {epochs: 10, batch_size: 16}\nrun: {seed: 1}\ndata: {num_workers: 1}\n")
    second.write_text("[stage1]\nepochs = 20\n[run]\nseed = 2\n")
    cfg = build_config(
        TrainConfig, file=[first, second], stage1={"epochs": 30}, run__seed=3, overrides=["--run.seed", "4"]
    )
    assert cfg.data.num_workers == 1  # only the first file
    assert cfg.stage1.batch_size == 16  # first file, nobody later
    assert cfg.stage1.epochs == 30  # kwargs beat both files
    assert cfg.run.seed == 4  # overrides beat kwargs
    assert cfg.stage2 == Stage2Config()  # defaults elsewhere
    assert build_config(TrainConfig, file=[first, second]).stage1.epochs == 20  # later file wins


def test_section_instances_as_kwargs():
    s1 = Stage1Config(epochs=3, mixup=False)
    cfg = build_config(TrainConfig, stage1=s1, overrides={"stage1.optim.lr": 2e-4})
    assert cfg.stage1.epochs == 3 and not cfg.stage1.mixup and cfg.stage1.optim.lr == 2e-4
    assert build_config(Stage1Config, epochs=4).epochs == 4  # any section works on its own
    assert build_config(Stage1Config, overrides=["--optim.lr", "1e-4"]).optim.lr == 1e-4


# -- dotted overrides and types ------------------------------------------------------------------------


def test_overrides_convert_every_supported_type():
    cfg = build_config(
        TrainConfig,
        overrides=[
            "--stage1.epochs",
            "12",  # int
            "--stage2.threshold=0.95",  # float
            "--stage1.optim.lr",
            "1e-4",  # float in exponent notation
            "--run.compile",
            "yes",  # bool
            "--stage1.mixup",
            "0",  # bool
            "--run.tensorboard=false",  # bool
            "--model.name",
            "vit_small_patch16",  # str
            "--data.root",
            "~/faces",  # Path, ~ expanded
            "--run.device",
            "cuda",  # Literal
            "--stage1.optim.betas",
            "0.8,0.9",  # tuple[float, float]
            "--stage2.optim.milestones",
            "(10, 30, 45)",  # tuple[int, ...]
            "--stage1.optim.clip_grad",
            "1.0",  # float | None
            "--model.pretrained",
            "none",  # Path | None
            "--data.val_split",
            "val",  # str | None
            "stage1.fallback_box=0,0,224,224",  # key=value form
        ],
    )
    assert cfg.stage1.epochs == 12 and cfg.stage2.threshold == 0.95 and cfg.stage1.optim.lr == 1e-4
    assert cfg.run.compile is True and cfg.stage1.mixup is False and cfg.run.tensorboard is False
    assert cfg.model.name == "vit_small_patch16" and cfg.data.root == Path("~/faces").expanduser()
    assert cfg.run.device == "cuda" and cfg.stage1.optim.betas == (0.8, 0.9)
    assert cfg.stage2.optim.milestones == (10, 30, 45) and cfg.stage1.optim.clip_grad == 1.0
    assert cfg.model.pretrained is None and cfg.data.val_split == "val"
    assert cfg.stage1.fallback_box == (0.0, 0.0, 224.0, 224.0)
    # a bare bool flag means true; None back through "null"
    cfg = build_config(TrainConfig, overrides=["--run.compile", "--stage1.optim.clip_grad", "null"])
    assert cfg.run.compile is True and cfg.stage1.optim.clip_grad is None


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        (["--stage1.epochs", "ten"], "stage1.epochs", "an integer"),
        (["--stage1.epochs", "true"], "stage1.epochs", "an integer"),
        (["--stage1.epochs", "2.5"], "stage1.epochs", "an integer"),
        (["--stage2.threshold", "high"], "stage2.threshold", "a number"),
        (["--run.compile", "maybe"], "run.compile", "a boolean"),
        (["--run.device", "tpu"], "run.device", "one of auto, cpu, cuda"),
        (["--run.precision", "int8"], "run.precision", "one of auto, bf16, fp16, fp32"),
        (["--run.compile_mode", "fast"], "run.compile_mode", "one of default, reduce-overhead, max-autotune"),
        (["--data.dali_device", "cuda"], "data.dali_device", "one of auto, cpu, gpu"),
        (["--stage1.optim.betas", "0.9"], "stage1.optim.betas", "2 comma-separated values"),
        (["--stage1.optim.betas", "0.9,x"], "stage1.optim.betas[1]", "a number"),
        (["--run.output_dir", ""], "run.output_dir", "a path"),
        (["--run.resume"], "run.resume", "needs a value"),
    ],
)
def test_bad_value_names_key_and_type(override, key, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        build_config(TrainConfig, overrides=override)
    assert info.value.key == key and str(info.value).startswith(key)


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"data.labeled_fraction": 0.0}, "data.labeled_fraction", r"\(0, 1\]"),
        ({"data.labeled_fraction": 1.5}, "data.labeled_fraction", r"\(0, 1\]"),
        ({"stage1.epochs": 0}, "stage1.epochs", "> 0"),
        ({"stage2.unlabeled_batch_size": -1}, "stage2.unlabeled_batch_size", "> 0"),
        ({"stage2.threshold": 1.01}, "stage2.threshold", r"\[0, 1\]"),
        ({"stage1.ema_decay": 1.0}, "stage1.ema_decay", r"\[0, 1\)"),
        ({"pretrain.mask_ratio": 1.0}, "pretrain.mask_ratio", r"\(0, 1\)"),
        ({"stage1.optim.warmup_epochs": -1}, "stage1.optim.warmup_epochs", ">= 0"),
        ({"stage2.optim.milestones": (40, 20)}, "stage2.optim.milestones", "increasing"),
        ({"stage1.optim.lr": None}, "stage1.optim.lr", "set lr or blr"),
        ({"stage1.optim.betas": (0.9, 1.0)}, "stage1.optim.betas[1]", r"\[0, 1\)"),
        ({"stage2.rand_augment_magnitude": 11}, "stage2.rand_augment_magnitude", r"\[0, 10\]"),
        ({"data.scale": (0.5, 0.2)}, "data.scale", "min <= max"),
        ({"stage1.fallback_box": (220, 25, 25, 220)}, "stage1.fallback_box", "x1 < x2"),
        ({"run.keep_checkpoints": -1}, "run.keep_checkpoints", ">= 0 or none"),
        ({"run.log_every": -1}, "run.log_every", ">= 0"),
        ({"run.save_every": 0}, "run.save_every", "> 0"),
        ({"run.eval_every": 0}, "run.eval_every", "> 0"),
        ({"pretrain.decoder_depth": 0}, "pretrain.decoder_depth", "> 0"),
        ({"pretrain.optim.layer_decay": 0.75}, "pretrain.optim.layer_decay", "fine-tuning"),
        ({"stage1.optim.layer_decay": 1.5}, "stage1.optim.layer_decay", r"\(0, 1\]"),
        ({"stage1.mixup_pairing": "shuffle"}, "stage1.mixup_pairing", "flip, random"),
    ],
)
def test_validation_names_the_field(overrides, key, problem):
    with pytest.raises(ConfigError, match=problem) as info:
        build_config(TrainConfig, overrides=overrides)
    assert info.value.key == key


def test_direct_construction_is_converted_and_validated():
    assert OptimConfig(lr="2e-4", betas=[0.5, 0.6]).betas == (0.5, 0.6)  # types enforced on direct use too
    with pytest.raises(ConfigError, match="threshold"):
        Stage2Config(threshold=2.0)
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        Stage1Config(epochs="many")
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().stage1.epochs = 3  # type: ignore[misc]


def test_unknown_keys_suggest_close_matches():
    with pytest.raises(ConfigError, match=r"did you mean .*stage2\.threshold") as info:
        build_config(TrainConfig, overrides=["--stage2.treshold", "0.5"])
    assert info.value.key == "stage2.treshold"
    with pytest.raises(ConfigError, match=r"stage1\.optim\.lr") as info:
        build_config(TrainConfig, overrides={"lr": 1e-3})  # a bare field: every section's lr is suggested
    assert "stage2.optim.lr" in str(info.value) and info.value.key == "lr"
    with pytest.raises(ConfigError, match="nonsense"):
        build_config(TrainConfig, nonsense=1)
    with pytest.raises(ConfigError, match="key=value"):
        build_config(TrainConfig, overrides=["stage1.epochs"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(TrainConfig, stage1=5)
    with pytest.raises(TypeError, match="cls"):
        build_config(dict)


# -- round trips ----------------------------------------------------------------------------------------


def test_round_trip_through_plain_dicts_and_checkpoints(tmp_path):
    cfg = build_config(
        TrainConfig, overrides=["--data.root", "/x/raf", "--stage2.optim.milestones", "5,9", "--model.num_classes", "8"]
    )
    plain = config_to_dict(cfg)
    assert plain["data"]["root"] == "/x/raf" and plain["stage2"]["optim"]["milestones"] == [5, 9]
    assert plain["data"]["split_file"] is None and plain["stage1"]["optim"]["betas"] == [0.9, 0.95]

    def is_plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and is_plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(is_plain(x) for x in v)
        return v is None or isinstance(v, (str, int, float, bool))

    assert is_plain(plain)
    assert config_from_dict(TrainConfig, plain) == cfg
    # a checkpoint's 'args' survives torch.save / torch.load(weights_only=True)
    torch.save({"args": plain}, tmp_path / "ckpt.pth")
    loaded = torch.load(tmp_path / "ckpt.pth", weights_only=True)["args"]
    assert config_from_dict(TrainConfig, loaded) == cfg
    # save_config writes a file that build_config reads back
    for name in ("config.yaml", "config.json"):
        path = save_config(cfg, tmp_path / "out" / name)
        assert path.is_file()
    assert build_config(TrainConfig, file=tmp_path / "out" / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["model"]["num_classes"] == 8
    with pytest.raises(ValueError, match=r"config\.toml"):
        save_config(cfg, tmp_path / "config.toml")


def test_from_dict_partial_and_unknown():
    assert config_from_dict(TrainConfig, {"stage1": {"epochs": 2}}).stage1.epochs == 2
    assert config_from_dict(TrainConfig, {}) == TrainConfig()
    with pytest.raises(ConfigError, match=r"stage1\.epohcs"):
        config_from_dict(TrainConfig, {"stage1": {"epohcs": 2}})


# -- argparse -------------------------------------------------------------------------------------------


def make_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferfast-test")
    return add_config_arguments(parser, TrainConfig, **kwargs)


def test_help_lists_every_knob_with_help_and_default():
    text = make_parser().format_help()
    for key in config_keys(TrainConfig):
        assert f"--{key}" in text, key
    assert "--config FILE" in text
    assert "confidence a pseudo-label needs" in text and "(default: 0.7)" in text
    assert "{auto,cpu,cuda}" in text and "stage2.optim options" in text


def test_sections_limit_the_options():
    text = make_parser(sections=("data", "stage1")).format_help()
    assert "--stage1.optim.lr" in text and "--data.root" in text
    assert "--stage2.threshold" not in text and "--pretrain.mask_ratio" not in text
    with pytest.raises(ValueError, match="stage3"):
        make_parser(sections=("stage3",))


def test_parse_a_command_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("stage1: {epochs: 9, batch_size: 8}\nrun: {precision: fp32}\n")
    parser = make_parser()
    args = parser.parse_args(
        ["--config", str(path), "--stage1.epochs", "11", "--run.compile", "--stage1.optim.betas", "0.85,0.9"]
    )
    cfg = config_from_args(TrainConfig, args, parser)
    assert cfg.stage1.epochs == 11  # the command line beats the file
    assert cfg.stage1.batch_size == 8 and cfg.run.precision == "fp32"  # the file beats the defaults
    assert cfg.run.compile is True and cfg.stage1.optim.betas == (0.85, 0.9)
    assert cfg.stage2 == Stage2Config()  # argparse defaults do not override file values or defaults
    # no options at all: the recipe's defaults
    assert config_from_args(TrainConfig, parser.parse_args([])) == TrainConfig()


def test_argparse_errors_name_the_option(tmp_path, capsys):
    parser = make_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--stage2.threshold", "high"])
    assert info.value.code == 2
    assert "argument --stage2.threshold: expected a number, got 'high'" in capsys.readouterr().err
    # a well-typed value out of range: config_from_args reports it through parser.error, naming the option
    args = parser.parse_args(["--stage2.threshold", "1.5"])
    with pytest.raises(SystemExit):
        config_from_args(TrainConfig, args, parser)
    assert "argument --stage2.threshold: must be in [0, 1], got 1.5" in capsys.readouterr().err
    # without a parser the ConfigError propagates
    with pytest.raises(ConfigError, match=r"stage2\.threshold"):
        config_from_args(TrainConfig, args)


def test_bad_config_path_names_the_file(tmp_path, capsys):
    parser = make_parser()
    missing = tmp_path / "missing.yaml"
    args = parser.parse_args(["--config", str(missing)])
    with pytest.raises(SystemExit):
        config_from_args(TrainConfig, args, parser)
    err = capsys.readouterr().err
    assert "argument --config" in err and "missing.yaml" in err
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        config_from_args(TrainConfig, args)
    # a bad value inside the file is reported against --config with the dotted key
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1: {epochs: -3}\n")
    with pytest.raises(SystemExit):
        config_from_args(TrainConfig, parser.parse_args(["--config", str(bad)]), parser)
    assert "argument --config: stage1.epochs: must be > 0" in capsys.readouterr().err


def test_the_gpu_path_settings_parse():
    cfg = build_config(TrainConfig, overrides=["--run.compile_mode", "reduce-overhead", "--data.dali_device=gpu"])
    assert cfg.run.compile_mode == "reduce-overhead" and cfg.data.dali_device == "gpu"
    assert config_from_dict(TrainConfig, config_to_dict(cfg)) == cfg


# -- one package, one way to derive, one override parser, one rule for the run settings --------------------------


def test_the_package_has_one_job_per_module():
    from ferfast.config import build, cli, schema, values

    assert values.ConfigError is ConfigError and schema.TrainConfig is TrainConfig
    assert build.build_config is build_config and cli.add_config_arguments is add_config_arguments
    from ferfast import config

    assert "derive_config" in config.__all__ and all(hasattr(config, name) for name in config.__all__)


def test_derive_config_changes_some_settings_and_records_them():
    from ferfast.config import derive_config, given_keys

    base = build_config(TrainConfig, overrides={"stage1.epochs": 7, "data.seed": 3})
    cfg = derive_config(base, {"stage1.optim.lr": 2e-4}, stage2__epochs=9, run={"log_every": 5})
    assert (cfg.stage1.epochs, cfg.data.seed, cfg.stage1.optim.lr, cfg.stage2.epochs) == (7, 3, 2e-4, 9)
    assert cfg.run.log_every == 5 and cfg.run.save_every == base.run.save_every
    assert given_keys(cfg) == given_keys(base) | {"stage1.optim.lr", "stage2.epochs", "run.log_every"}
    assert derive_config(base, ["--stage2.epochs", "4", "stage1.mixup=false"]).stage2.epochs == 4
    assert derive_config(base, stage1__epochs=2, overrides={"stage1.epochs": 3}).stage1.epochs == 3  # overrides win
    assert derive_config(base) == base
    with pytest.raises(ConfigError, match=r"stage1\.epochs"):
        derive_config(base, {"stage1.epochs": 0})
    with pytest.raises(ConfigError, match=r"did you mean stage1\.epochs"):
        derive_config(base, {"stage1.epoch": 3})


def test_override_words_are_parsed_by_the_command_lines_parser():
    from ferfast.config.options import parse_overrides

    words = [
        "--stage1.optim.lr",
        "1e-4",
        "--data.root=/x",
        "run.compile=true",
        "--run.tensorboard",
        "--stage2__epochs",
        "3",
        "--data.root",
        "a=b",
    ]
    assert parse_overrides(TrainConfig, words) == {
        "stage1.optim.lr": "1e-4",
        "data.root": "a=b",
        "run.compile": "true",
        "run.tensorboard": True,
        "stage2.epochs": "3",
    }
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(TrainConfig, ["--stage1.epochs"])
    with pytest.raises(ConfigError, match="an override is"):
        parse_overrides(TrainConfig, ["stage1.epochs"])
    with pytest.raises(ConfigError, match=r"did you mean stage1\.epochs"):
        parse_overrides(TrainConfig, ["--stage1.epoch", "3"])
    with pytest.raises(TypeError, match="strings"):
        parse_overrides(TrainConfig, ["--stage1.epochs", 3])


def test_run_settings_follow_one_rule_in_the_config_and_the_engine(tmp_path):
    from ferfast.config import RunConfig
    from ferfast.config.schema import RUN_COUNTS
    from ferfast.engine.loop import FitConfig

    run = build_config(
        TrainConfig,
        overrides={
            "run.log_every": 0,
            "run.print_every": 0,
            "run.keep_checkpoints": 0,
            "run.save_every_steps": 0,
            "run.nonfinite": "rollback",
            "run.compile_mode": "reduce-overhead",
            "run.eval_every": 3,
        },
    ).run
    fit = FitConfig.from_run(run, epochs=2, lr_at=lambda e: 1e-3, output_dir=tmp_path, eval_every=1)
    assert (fit.log_every, fit.print_every, fit.keep, fit.save_every_steps) == (0, 0, 0, 0)
    assert (fit.nonfinite, fit.compile_mode, fit.save_every, fit.eval_every) == ("rollback", "reduce-overhead", 10, 1)
    assert RunConfig(keep_checkpoints=None).keep_checkpoints is None  # none: keep all, as FitConfig's keep=None
    assert FitConfig.from_run(RunConfig(keep_checkpoints=None), epochs=1, lr_at=float, output_dir=tmp_path).keep is None
    for name, (minimum, _) in RUN_COUNTS.items():
        fit_name = "keep" if name == "keep_checkpoints" else name
        with pytest.raises(ConfigError, match=f"run.{name}"):
            build_config(TrainConfig, overrides={f"run.{name}": minimum - 1})
        with pytest.raises(ValueError, match=fit_name):
            FitConfig(epochs=1, lr_at=float, output_dir=tmp_path, **{fit_name: minimum - 1})
        RunConfig(**{name: minimum})
        FitConfig(epochs=1, lr_at=float, output_dir=tmp_path, **{fit_name: minimum})
