"""The whole-step benchmarks run on the CPU in CI (quick shapes), so that they cannot rot between GPU runs.

``benchmarks/`` is not collected by the test run (pytest's ``testpaths``); this runs its training-step files in a
subprocess with ``--cpu-only --quick`` and checks that every case measured images/s and ferfast's ratio to the SSFER
recipe. Nothing here asserts on a time: only that the numbers exist and are positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_train_step_and_loop_benchmarks_run_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/bench_train_step.py",
        "benchmarks/bench_train_loop.py",
        "--cpu-only",
        "--quick",
        "--no-compile",
        "-k",
        "not torch-ref",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={out}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["benchmarks"]
    ops = {r["extra_info"]["op"] for r in rows}
    assert {
        "train_step_pretrain",
        "train_step_stage1",
        "train_step_stage2",
        "train_loop_pretrain",
        "train_loop_stage1",
    } <= ops
    for r in rows:
        extra = r["extra_info"]
        assert extra["images_per_s"] > 0, r["name"]
        if extra["provider"] != "ssfer-recipe":  # measured after the SSFER recipe of its shape, in the same run
            assert extra["vs_ssfer_recipe"] > 0, r["name"]
