"""``benchmarks/gpu_check.sh``'s plan, checked on the CPU so that it cannot rot: its dry run (order of the steps,
caps within the budget, the summary's format) and its accounting of steps that do not run (skipped, never passed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
#: the steps in the order of what they verify per minute (issue 12, item 6)
PLAN = [
    "preflight",
    "build",
    "cuda-loaded",
    "cuda-op-tests",
    "train-throughput",
    "train-loop",
    "triton-tests",
    "op-benchmarks",
    "leftovers",
    "report",
]
#: a first contact must fit about 9 minutes (the lease is 15, machine start-up included)
BUDGET_S = 540
STEP_KEYS = {"name", "cap_s", "limit_s", "status", "rc", "seconds", "reason", "command"}

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def _run(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k != "TRITON_CACHE_DIR"}
    full_env.update({"OUT": str(out), "PYTHON": sys.executable, **env})
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120
    )


def _summary(out: Path) -> dict:
    path = out / "gpu_check_summary.json"
    assert path.is_file(), f"no summary in {out}: {sorted(p.name for p in out.iterdir())}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("how", ["flag", "env"])
def test_dry_run_plan(tmp_path, how):
    args, env = (["--dry-run"], {}) if how == "flag" else ([], {"GPU_CHECK_DRY_RUN": "1"})
    proc = _run(tmp_path, *args, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = _summary(tmp_path)

    assert doc["dry_run"] is True and doc["verdict"] == "dry run"
    assert doc["budget_s"] == BUDGET_S
    steps = doc["steps"]
    assert [s["name"] for s in steps] == PLAN
    for s in steps:
        assert set(s) == STEP_KEYS, s
        assert s["status"] == "skipped" and s["reason"] == "dry run", s
        assert s["rc"] is None and s["seconds"] == 0
        assert isinstance(s["cap_s"], int) and s["cap_s"] > 0
        assert s["command"], s
    assert doc["caps_total_s"] == sum(s["cap_s"] for s in steps) <= BUDGET_S
    assert doc["counts"] == {"passed": 0, "failed": 0, "timed out": 0, "skipped": len(PLAN)}

    # the plan is printed, each step with its cap and command, in order
    positions = [proc.stdout.index(f"=== [{name}] cap ") for name in PLAN]
    assert positions == sorted(positions)
    # nothing ran: no build log, no benchmark JSON
    assert not (tmp_path / "gpu_logs").exists() and not (tmp_path / "gpu_report.md").exists()

    md = (tmp_path / "gpu_check_summary.md").read_text()
    assert md.startswith("# gpu_check summary: DRY RUN")
    assert md.count("skipped: dry run") == len(PLAN)
    assert "passed |" not in md


def test_dry_run_commands(tmp_path):
    """What the plan's commands promise: CUDA kernels asserted loaded, CUDA tests by marker in parallel, the Triton
    cache in the repository, strict targets, and no re-run of the CPU tests that CI already runs."""
    proc = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commands = {s["name"]: s["command"] for s in _summary(tmp_path)["steps"]}
    assert "ferfast.info --require cuda --require triton" in commands["cuda-loaded"]
    assert commands["cuda-op-tests"].startswith("test_files cuda ")
    triton_files = commands["triton-tests"].split()[4:]
    assert triton_files[0] == "tests/ops/test_masked_patch_mse.py", triton_files  # MAE ops first
    assert "tests/ops/test_compile.py" not in triton_files
    assert "bench_train_step.py" in commands["train-throughput"]
    assert "--benchmark-json" in commands["op-benchmarks"]
    assert "not cuda" not in " ".join(commands.values())  # the old "rest of the tests" step is gone
    assert f"TRITON_CACHE_DIR={REPO / '.triton_cache'}" in proc.stdout  # warm on a rerun, and git-ignored
    assert ".triton_cache/" in (REPO / ".gitignore").read_text().splitlines()
    script = SCRIPT.read_text()
    assert "--check-target --target-device cuda" in script and "--strict" in script


def test_out_of_time_steps_are_skipped_not_passed(tmp_path):
    """With a budget too small to start anything, every step is reported skipped ("out of time") and the check
    fails: a step that did not run is never counted as passed."""
    proc = _run(tmp_path, GPU_CHECK_BUDGET_S="4")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = _summary(tmp_path)
    assert doc["dry_run"] is False and doc["verdict"] == "incomplete"
    assert [s["name"] for s in doc["steps"]] == PLAN
    assert {s["status"] for s in doc["steps"]} == {"skipped"}
    assert {s["reason"] for s in doc["steps"]} == {"out of time"}
    assert doc["counts"]["passed"] == 0
    assert "INCOMPLETE" in (tmp_path / "gpu_check_summary.md").read_text()


def test_unknown_argument_is_refused(tmp_path):
    proc = _run(tmp_path, "--bogus")
    assert proc.returncode == 2
    assert "unknown argument '--bogus'" in proc.stderr


# ---- benchmarks/report.py --check-target, on small synthetic inputs ----------------------------------------


def _report_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ferfast_bench_report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(op, mode, provider, *, device="cuda", shape="S", median=0.01, event_ms=None, **info):
    extra = {"op": op, "mode": mode, "provider": provider, "device": device, "shape": shape, "variant": "", **info}
    if event_ms is not None:
        extra["gpu_event_ms"] = event_ms
    stats = {"median": median, "rounds": 3} if median is not None else {}
    return {"group": f"{op} | {device} | {shape} | {mode}", "name": provider, "extra_info": extra, "stats": stats}


def _check(tmp_path, capsys, benchmarks, *args):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    rc = _report_module().main([str(path), "--check-target", "--strict", *args])
    out = capsys.readouterr().out
    verdicts = [line for line in out.splitlines() if line.startswith("VERDICT:")]
    assert len(verdicts) == 1, out  # one overall verdict line
    return rc, out, verdicts[0]


def _gpu_rows(ferfast_ms=40.0, fraction=0.85):
    return [
        _bench(
            "masked_patch_mse",
            "full",
            "ferfast-triton",
            shape="B64-224-p16",
            event_ms=0.5,
            gpu_event_copy_fraction=fraction,
            **{"gpu_event_GB/s": 2800.0},
            ops_backend="triton",
        ),
        _bench("train_step_pretrain", "step", "ssfer-recipe", event_ms=100.0, ops_backend="reference"),
        _bench("train_step_pretrain", "step", "ferfast-auto", event_ms=ferfast_ms, ops_backend="triton"),
    ]


TWO = ("--targets", "masked_patch_mse,train_pretrain_vs_ssfer")


def test_report_targets_pass(tmp_path, capsys):
    rc, out, verdict = _check(tmp_path, capsys, _gpu_rows(), *TWO)
    assert rc == 0, out
    assert verdict == "VERDICT: PASS: all 2 targets on cuda met"
    assert "= 2.50x -> TARGET MET" in out
    assert "ferfast-auto [triton]" in out and "ssfer-recipe [reference]" in out  # the implementation that ran


def test_report_target_missed(tmp_path, capsys):
    rc, out, verdict = _check(tmp_path, capsys, _gpu_rows(ferfast_ms=60.0, fraction=0.5), *TWO)
    assert rc == 1, out
    assert verdict.startswith("VERDICT: FAIL on cuda: 0 of 2 met; 2 missed"), verdict
    assert "= 1.67x -> TARGET MISSED" in out


def test_report_missing_data_fails(tmp_path, capsys):
    rows = _gpu_rows()[:1]  # no training-step rows at all
    rc, out, verdict = _check(tmp_path, capsys, rows, *TWO)
    assert rc == 1, out
    assert "1 of 2 met" in verdict and "1 missing data (train_pretrain_vs_ssfer)" in verdict, verdict
    # the baseline alone missing is missing data too
    rows = [r for r in _gpu_rows() if r["extra_info"]["provider"] != "ssfer-recipe"]
    rc, out, verdict = _check(tmp_path, capsys, rows, *TWO)
    assert rc == 1 and "no ssfer-recipe row in the data -> MISSING DATA" in out, out


def test_report_row_without_timing_fails(tmp_path, capsys):
    rows = _gpu_rows()
    rows[2] = _bench("train_step_pretrain", "step", "ferfast-auto", median=None)  # e.g. a run cut short
    rc, out, verdict = _check(tmp_path, capsys, rows, *TWO)
    assert rc == 1, out
    assert "1 no timing (train_pretrain_vs_ssfer)" in verdict, verdict
    rows = _gpu_rows()
    rows[0] = _bench("masked_patch_mse", "full", "ferfast-triton", shape="B64-224-p16", median=None)
    rc, out, verdict = _check(tmp_path, capsys, rows, *TWO)
    assert rc == 1 and "1 no timing (masked_patch_mse)" in verdict, verdict


def test_report_device_selects_its_targets(tmp_path, capsys):
    """On cuda the GPU targets (training steps included, no loaders) are all required: with only two of them in the
    data the rest are missing data; on cpu the loader targets are required instead."""
    rc, out, verdict = _check(tmp_path, capsys, _gpu_rows(), "--target-device", "cuda")
    assert rc == 1 and "train_stage1_vs_ssfer" in verdict and "loader_" not in verdict, verdict
    loaders = [
        _bench(
            "loader_pretrain",
            "epoch",
            "ssfer-imagefolder-w0",
            device="cpu",
            median=1.0,
            implementation="torchvision ImageFolder + SSFER's transforms",
        ),
        _bench("loader_pretrain", "epoch", "ferfast-torch-w2", device="cpu", median=0.5),
        _bench(
            "loader_pretrain",
            "epoch",
            "ferfast-dali-cpu",
            device="cpu",
            median=0.2,
            implementation="DALI + ferfast's DALI operators",
        ),
    ]
    rc, out, verdict = _check(tmp_path, capsys, loaders, "--target-device", "cpu")
    assert rc == 1 and "loader_stage2_vs_ssfer-two-crop-w2" in verdict and "train_" not in verdict, verdict
    assert "ferfast-dali-cpu [DALI + ferfast's DALI operators]: 200.000 ms vs ssfer-imagefolder-w0" in out
    assert "| DALI + ferfast's DALI operators |" in out  # the group table shows the implementation too
    names = "loader_pretrain_vs_ssfer-imagefolder-w0,loader_pretrain_vs_ferfast-torch-w2"
    rc, out, verdict = _check(tmp_path, capsys, loaders, "--targets", names)
    assert rc == 0 and verdict == "VERDICT: PASS: all 2 targets on cpu met", out


def test_report_without_data_fails(tmp_path, capsys):
    rc, _out, verdict = _check(tmp_path, capsys, [])
    assert rc == 2 and verdict == "VERDICT: FAIL: no benchmarks in the data"
