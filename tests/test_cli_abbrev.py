"""The command line takes whole option names only, as the Python API takes whole config keys (issue 13, item 9).

argparse's default prefix matching took ``--stage1.epoch 3`` for ``--stage1.epochs 3`` while
``build_config(TrainConfig, overrides={"stage1.epoch": 3})`` raised; every ferfast parser now refuses
abbreviations with exit status 2, naming the option and the options it may mean.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from ferfast.cli import ArgumentParser, build_parser
from ferfast.config import TrainConfig, add_config_arguments
from ferfast.train import main


def _parsers(parser: argparse.ArgumentParser):
    """``parser`` and every sub-parser under it, at any depth."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def test_every_parser_refuses_abbreviations():
    parsers = list(_parsers(build_parser()))
    assert len(parsers) >= 10  # the top level, the stages, predict, data and its three sub-commands, demo
    assert all(isinstance(p, ArgumentParser) and p.allow_abbrev is False for p in parsers)


@pytest.mark.parametrize(
    ("argv", "option", "meant"),
    [
        (["finetune", "--stage1.epoch", "3"], "--stage1.epoch", "--stage1.epochs"),
        (["finetune", "--stage1.epoch=3"], "--stage1.epoch", "--stage1.epochs"),
        (["semisup", "--stage2.thresh", "0.9"], "--stage2.thresh", "--stage2.threshold"),
        (["pretrain", "--pretrain.mask", "0.5"], "--pretrain.mask", "--pretrain.mask_ratio"),
        (["evaluate", "ckpt.pth", "--ou", "x"], "--ou", "--out"),
        (["predict", "ckpt.pth", "a.jpg", "--marg", "0.3"], "--marg", "--margin"),
        (["data", "detect", "ROOT", "--forc"], "--forc", "--force"),
        (["data", "synth", "OUT", "--tes", "4"], "--tes", "--test"),
        (["demo", "--quic"], "--quic", "--quick"),
    ],
)
def test_an_abbreviated_option_is_a_usage_error_naming_it(argv, option, meant, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"unrecognized arguments: {option}" in err and "not abbreviated" in err
    assert f"did you mean {meant}" in err
    command = " ".join(a for a in argv[:2] if a in {"data", "detect", "synth"}) or argv[0]
    assert f"python -m ferfast.train {command}: error:" in err  # the command's own usage, not the top level's


def test_a_misspelt_option_suggests_the_closest_without_calling_it_an_abbreviation(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--stage1.lr", "0.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--stage1.lr: did you mean --stage1.optim.lr" in err
    assert "not abbreviated" not in err


def test_whole_options_still_parse():
    args = build_parser().parse_args(["finetune", "--stage1.epochs", "3", "--stage1.optim.lr=0.5"])
    assert getattr(args, "stage1.epochs") == 3 and getattr(args, "stage1.optim.lr") == 0.5
    assert not hasattr(args, "_ferfast_unknown_owner")


def test_add_config_arguments_turns_abbreviations_off_on_any_parser(capsys):
    parser = add_config_arguments(argparse.ArgumentParser(prog="mine"), TrainConfig, sections=("stage1",))
    assert parser.allow_abbrev is False
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--stage1.epoch", "3"])
    assert e.value.code == 2 and "--stage1.epoch" in capsys.readouterr().err


def test_abbreviation_refused_in_a_real_process():
    cmd = [sys.executable, "-m", "ferfast.train", "finetune", "--stage1.epoch", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--stage1.epoch" in done.stderr and "did you mean --stage1.epochs?" in done.stderr
    assert "Traceback" not in done.stderr
