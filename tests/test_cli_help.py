"""The CLI's help (issue 13, item 9): fast (nothing heavy imported), and each command lists what it uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferfast.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_imports_no_torch():
    """``--help`` stays fast: neither the CLI nor the config pulls in torch, the native library or the data layer."""
    code = (
        "import sys\nfrom ferfast.cli import main\ntry:\n    main(['finetune', '--help'])\nexcept SystemExit:\n"
        "    pass\nprint(sorted(m for m in ('torch', 'torchvision', 'ferfast.data', 'ferfast.models') "
        "if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_evaluate_help_lists_only_what_evaluate_uses(capsys):
    text = _help(capsys, "evaluate")
    for option in ("--data.root", "--data.format", "--data.test_split", "--data.loader", "--run.device", "--out"):
        assert option in text, option
    for option in (
        "--stage1.",
        "--stage2.",
        "--pretrain.",
        "--model.",
        "--data.labeled_fraction",
        "--run.output_dir",
        "--data.image_size",
        "--fresh",
    ):
        assert option not in text, option


def test_stage_commands_explain_hand_over_and_fresh(capsys):
    semisup = _help(capsys, "semisup")
    assert "RUN/stage1/checkpoint-last.pth" in semisup and "--fresh" in semisup and "--stage2.epochs" in semisup
    finetune = _help(capsys, "finetune")
    assert "--model.pretrained" in finetune and "--stage2." not in finetune
    top = _help(capsys)
    assert "list-models" in top and "export" in top
