"""The whole pipeline from the command line, as a user runs it, in real subprocesses (issue 13's acceptance).

``data synth`` -> ``pretrain`` -> ``finetune`` with only ``--data.root`` and ``--model.pretrained`` -> ``semisup``
with only ``--data.root`` and ``--run.output_dir`` -> ``evaluate`` -> ``predict`` on a folder -> ``export``: each
stage prints its start-up summary and takes the earlier stage's settings (model, image size, label split). The
training budget (epochs, batch sizes, the loader) comes from one ``--config`` file shared by every command, so
that the options given on each command line are only those a user would type; none of them is a setting that
a stage hands over.

Then the faults, each ending as the CLI promises (one line, exit 1 at run time or 2 for usage, nothing
half-written, no checkpoint lost): a run killed with ``kill -9`` mid-epoch and one killed during a checkpoint
write, a damaged last checkpoint, a concurrent run, a full disk (a small tmpfs, where this machine lets a test
mount one), bad options, an unwritable output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m ferfast.train"

#: the training budget of every command: tiny, on the CPU, in the main process
BUDGET = """\
data:
  loader: torch
  num_workers: 0
run:
  device: cpu
  precision: fp32
  tensorboard: false
  log_every: 2
pretrain:
  epochs: 1
  batch_size: 32
stage1:
  epochs: 2
  batch_size: 8
stage2:
  epochs: 1
  batch_size: 8
  unlabeled_batch_size: 8
"""


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ferfast.train ARGS`` in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "ferfast.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_line_error(r: subprocess.CompletedProcess, command: str, status: int, *needles: str) -> str:
    """The run failed with ``status`` and printed exactly one line, ``python -m ferfast.train CMD: error: ...``,
    naming every needle, and no traceback."""
    assert r.returncode == status, f"exit {r.returncode}, expected {status}\n{r.stdout}\n{r.stderr}"
    err = [line for line in lines(r.stderr) if "Warning" not in line and not line.startswith("  ")]
    assert len(err) == 1 and err[0].startswith(f"{PROG} {command}: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def read_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def log_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run the pipeline once; the tests read its outputs (and copy them before changing anything)."""
    work = tmp_path_factory.mktemp("pipeline")
    (work / "budget.yaml").write_text(BUDGET)
    results = {}
    r = cli(
        "data",
        "synth",
        "faces",
        "--train",
        "112",
        "--test",
        "42",
        "--unlabeled",
        "64",
        "--identities",
        "16",
        "--size",
        "64",
        "--workers",
        "1",
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    results["pretrain"] = cli(
        "pretrain",
        "--data.root",
        "faces",
        "--model.name",
        "mae_vit_demo",
        "--data.image_size",
        "64",
        "--run.output_dir",
        "runs/mae",
        "--config",
        "budget.yaml",
        cwd=work,
    )
    results["finetune"] = cli(
        "finetune",
        "--data.root",
        "faces",
        "--model.pretrained",
        "runs/mae/pretrain/checkpoint-last.pth",
        "--run.output_dir",
        "runs/raf",
        "--config",
        "budget.yaml",
        cwd=work,
    )
    results["semisup"] = cli(
        "semisup", "--data.root", "faces", "--run.output_dir", "runs/raf", "--config", "budget.yaml", cwd=work
    )
    results["evaluate"] = cli(
        "evaluate",
        "runs/raf/stage2/checkpoint-last.pth",
        "--data.loader",
        "torch",
        "--data.num_workers",
        "0",
        "--run.device",
        "cpu",
        cwd=work,
    )
    results["predict"] = cli(
        "predict",
        "runs/raf/stage2/checkpoint-last.pth",
        "faces/Image/aligned",
        "--no-detect",
        "--format",
        "jsonl",
        "--device",
        "cpu",
        cwd=work,
    )
    results["export"] = cli("export", "runs/raf/stage2/checkpoint-last.pth", "exported", cwd=work)
    return work, results


def test_pretrain_says_what_it_does(pipeline):
    work, results = pipeline
    r = results["pretrain"]
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "pretrain: data faces/unlabeled: 64 unlabeled faces" in out  # the pool, not the labeled images
    assert "pretrain: model mae_vit_demo:" in out and "64 px images" in out and "75% of the patches masked" in out
    assert "pretrain: loader torch" in out and "output runs/mae/pretrain" in out
    assert "pretrain: device cpu | precision fp32" in out
    assert (work / "runs/mae/pretrain/checkpoint-last.pth").is_file()
    saved = read_config(work / "runs/mae/pretrain/config.yaml")
    assert saved["model"]["name"] == "vit_demo" and saved["data"]["image_size"] == 64


def test_finetune_takes_the_model_and_image_size_from_the_pretraining(pipeline):
    work, results = pipeline
    r = results["finetune"]
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "stage1: from runs/mae/pretrain/checkpoint-last.pth: model.name=vit_demo, data.image_size=64" in out
    assert "stage1: model vit_demo:" in out and "[CLS] after norm" in out
    assert (
        "stage1: weights: runs/mae/pretrain/checkpoint-last.pth; missing keys (initialised here): head.weight, "
        "head.bias; unexpected keys: none" in out
    )
    assert "labeled (0.25 of the training images, seed 0)" in out and "split drawn now" in out
    assert "stage1: test accuracy " in out
    saved = read_config(work / "runs/raf/stage1/config.yaml")
    assert saved["model"]["name"] == "vit_demo" and saved["data"]["image_size"] == 64
    assert (work / "runs/raf/split.json").is_file() and (work / "runs/raf/stage1/eval/metrics.json").is_file()


def test_semisup_takes_stage1s_settings_and_split(pipeline):
    work, results = pipeline
    r = results["semisup"]
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "stage2: from runs/raf/stage1/checkpoint-last.pth: model.name=vit_demo, data.image_size=64" in out
    assert "split from its file (runs/raf/split.json)" in out and "FixMatch: pseudo-labels with p >= 0.7" in out
    stage1 = read_config(work / "runs/raf/stage1/config.yaml")
    stage2 = read_config(work / "runs/raf/stage2/config.yaml")
    for section, key in (
        ("model", "name"),
        ("model", "global_pool"),
        ("data", "image_size"),
        ("data", "labeled_fraction"),
        ("data", "seed"),
    ):
        assert stage2[section][key] == stage1[section][key], (section, key)
    metrics = json.loads((work / "runs/raf/stage2/eval/metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["class_names"]) == 7


def test_evaluate_and_predict_a_folder(pipeline):
    work, results = pipeline
    r = results["evaluate"]
    assert r.returncode == 0, r.stderr
    written = json.loads((work / "runs/raf/stage2/eval/metrics.json").read_text())
    assert f'"accuracy": {written["accuracy"]}' in r.stdout
    r = results["predict"]
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in lines(r.stdout)]
    images = sorted((work / "faces/Image/aligned").glob("*.jpg"))
    assert len(rows) == len(images) == 154
    assert all(row["error"] is None and row["label"] in written["class_names"] for row in rows)


def test_export_gives_the_models_outputs(pipeline):
    import numpy as np

    from ferfast.api import load_model
    from ferfast.data import FACE_MEAN, FACE_STD

    ort = pytest.importorskip("onnxruntime")
    work, results = pipeline
    r = results["export"]
    assert r.returncode == 0, r.stderr
    spec = json.loads((work / "exported/preprocessing.json").read_text())
    assert spec["image_size"] == [64, 64] and len(spec["class_names"]) == 7
    model, names = load_model(work / "runs/raf/stage2/checkpoint-last.pth")
    assert names == spec["class_names"]
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    mean, std = torch.tensor(FACE_MEAN).view(1, 3, 1, 1), torch.tensor(FACE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images.float() / 255 - mean) / std).numpy()
    session = ort.InferenceSession(str(work / "exported/model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    program = torch.export.load(str(work / "exported/model.pt2"))
    np.testing.assert_allclose(program.module()(images).detach().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_semisup_contradicting_stage1_is_one_line_naming_both_values(pipeline):
    work, _ = pipeline
    r = cli(
        "semisup", "--run.output_dir", "runs/raf", "--data.labeled_fraction", "0.5", "--config", "budget.yaml", cwd=work
    )
    # stage 2 has run: its own checkpoint (stage 1's settings) is the first to disagree
    stage2 = "runs/raf/stage2/checkpoint-last.pth"
    assert_one_line_error(r, "semisup", 2, "data.labeled_fraction", "0.5", "0.25", stage2)
    r = cli("semisup", "--run.output_dir", "runs/raf", "--data.image_size", "96", "--config", "budget.yaml", cwd=work)
    assert_one_line_error(r, "semisup", 2, "data.image_size", "96", "64")


def test_semisup_without_stage1_names_the_missing_checkpoint(pipeline):
    work, _ = pipeline
    r = cli("semisup", "--data.root", "faces", "--run.output_dir", "runs/none", "--config", "budget.yaml", cwd=work)
    assert_one_line_error(r, "semisup", 1, "runs/none/stage1/checkpoint-last.pth")
    assert not (work / "runs/none").exists()


def test_fresh_moves_the_old_run_aside(pipeline, tmp_path):
    work, _ = pipeline
    shutil.copytree(work / "runs/raf", tmp_path / "raf")
    shutil.copy(work / "budget.yaml", tmp_path)
    (tmp_path / "faces").symlink_to(work / "faces")
    before = (tmp_path / "raf/stage1/checkpoint-last.pth").read_bytes()
    mae = str(work / "runs/mae/pretrain/checkpoint-last.pth")  # a fresh start inherits nothing from the old run
    r = cli(
        "finetune",
        "--data.root",
        "faces",
        "--run.output_dir",
        "raf",
        "--fresh",
        "--config",
        "budget.yaml",
        "--stage1.epochs",
        "1",
        "--data.labeled_fraction",
        "0.5",
        "--model.pretrained",
        mae,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    moved = [p for p in (tmp_path / "raf").iterdir() if p.name.startswith("previous-")]
    assert (
        len(moved) == 1
        and f"stage1: fresh start: the previous run's stage1, stage2, split.json moved to raf/{moved[0].name}"
        in r.stdout
    )
    assert (moved[0] / "stage1/checkpoint-last.pth").read_bytes() == before  # nothing deleted
    assert json.loads((tmp_path / "raf/split.json").read_text())["fraction"] == 0.5  # a new split, no mismatch


# ---- faults ------------------------------------------------------------------------------------------------


@pytest.fixture
def run_copy(pipeline, tmp_path):
    """A copy of the pipeline's run folder to break: ``(work dir, faces)``."""
    work, _ = pipeline
    shutil.copytree(work / "runs/raf", tmp_path / "raf")
    shutil.copy(work / "budget.yaml", tmp_path)
    (tmp_path / "faces").symlink_to(work / "faces")
    return tmp_path


def finetune_copy(run_copy: Path, *options: str) -> subprocess.CompletedProcess:
    """``finetune`` again on the copied run folder, with the pipeline's budget and ``options``."""
    return cli(
        "finetune", "--data.root", "faces", "--run.output_dir", "raf", "--config", "budget.yaml", *options, cwd=run_copy
    )


def test_rerunning_a_finished_stage_says_so_and_trains_nothing(run_copy):
    last = run_copy / "raf/stage1/checkpoint-last.pth"
    before = last.read_bytes()
    r = finetune_copy(run_copy)
    assert r.returncode == 0, r.stderr
    assert "stage1: already finished (raf/stage1/checkpoint-last.pth: 2 of 2 epochs): nothing to train" in r.stdout
    assert "stage1 epoch" not in r.stdout and last.read_bytes() == before
    assert "from raf/stage1/checkpoint-last.pth: model.name=vit_demo, data.image_size=64" in r.stdout  # its own


def test_concurrent_run_is_refused_naming_the_holder(run_copy):
    from ferfast.engine.runlock import run_lock

    with run_lock(run_copy / "raf/stage1"):  # this test process is the other run
        r = finetune_copy(run_copy, "--stage1.epochs", "3")
    assert_one_line_error(r, "finetune", 1, "raf/stage1", "in use", f"pid {os.getpid()}")


def test_damaged_last_checkpoint_resumes_from_the_newest_intact_one(run_copy):
    stage1 = run_copy / "raf/stage1"
    numbered = sorted(stage1.glob("checkpoint-[0-9]*.pth"))
    assert numbered, list(stage1.iterdir())
    last = stage1 / "checkpoint-last.pth"
    data = last.read_bytes()
    last.unlink()  # a hard link of the numbered one: write a truncated copy in its place
    last.write_bytes(data[: len(data) // 3])
    r = finetune_copy(run_copy, "--stage1.epochs", "3")
    assert r.returncode == 0, r.stderr
    assert "skipping damaged checkpoint" in r.stderr and "truncated" in r.stderr and numbered[-1].name in r.stderr
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] >= 2  # continued to the third epoch


def test_a_kill_during_a_checkpoint_write_leaves_a_temp_file_that_is_removed(run_copy):
    stage1 = run_copy / "raf/stage1"
    last = stage1 / "checkpoint-last.pth"
    temp = stage1 / ".checkpoint-last.pth.k1ll3d_x.tmp"  # what a write killed half-way leaves
    temp.write_bytes(last.read_bytes()[:1000])
    r = finetune_copy(run_copy, "--stage1.epochs", "3")
    assert r.returncode == 0, r.stderr
    assert "removed 1 temporary file" in r.stderr and temp.name in r.stderr and not temp.exists()


BAD_OPTIONS = [
    (["--stage1.epochs", "0"], "--stage1.epochs"),
    (["--stage1.epoch", "3"], "--stage1.epoch"),  # no prefix matching
    (["--data.labeled_fraction", "1.5"], "--data.labeled_fraction"),
    (["--model.name", "vit_dmeo"], "--model.name"),
    (["--run.nonfinite", "maybe"], "--run.nonfinite"),
    (["--data.loader", "pil"], "--data.loader"),
    (["--stage1.optim.lr", "fast"], "--stage1.optim.lr"),
]


@pytest.mark.parametrize("args,needle", BAD_OPTIONS, ids=[a[0] for a, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, args, needle):
    r = cli("finetune", "--data.root", "faces", "--run.output_dir", "out", *args, cwd=tmp_path)
    assert_one_line_error(r, "finetune", 2, needle)
    assert not (tmp_path / "out").exists()


def test_image_size_the_patch_does_not_divide_is_one_line(pipeline, tmp_path):
    work, _ = pipeline
    r = cli(
        "pretrain",
        "--data.root",
        str(work / "faces"),
        "--model.name",
        "vit_demo",
        "--data.image_size",
        "60",
        "--run.output_dir",
        "out",
        "--config",
        str(work / "budget.yaml"),
        cwd=tmp_path,
    )
    assert_one_line_error(r, "pretrain", 2, "60")
    assert not (tmp_path / "out").exists()


def test_output_folder_under_a_file_is_one_line_exit_1(pipeline, tmp_path):
    work, _ = pipeline
    (tmp_path / "afile").write_text("keep me")
    r = cli(
        "finetune",
        "--data.root",
        str(work / "faces"),
        "--run.output_dir",
        "afile/run",
        "--config",
        str(work / "budget.yaml"),
        cwd=tmp_path,
    )
    assert_one_line_error(r, "finetune", 1, "afile")
    assert (tmp_path / "afile").read_text() == "keep me"


def _tmpfs_script(size: str, options: str, command: list[str], mount: Path, keep: Path | None = None) -> list[str]:
    """``command`` in a private mount namespace with a tmpfs of ``size`` at ``mount`` (gone with the namespace: with
    ``keep``, what the command left there is copied to ``keep`` first); exits with the command's status."""
    quoted = " ".join(f"'{c}'" for c in command)
    after = f"; cp -a '{mount}' '{keep}'" if keep is not None else ""
    script = f"mount -t tmpfs -o size={size},{options} tmpfs '{mount}' && {{ {quoted}; rc=$?{after}; exit $rc; }}"
    return ["unshare", "-m", "sh", "-c", script]


def _can_mount_tmpfs(where: Path) -> str | None:
    """None when this machine lets a test mount a tmpfs in its own mount namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    r = subprocess.run(_tmpfs_script("1m", "rw", ["true"], where), capture_output=True, text=True, timeout=60)
    return None if r.returncode == 0 else f"cannot mount a tmpfs here: {r.stderr.strip()}"


def _cli_on_tmpfs(
    size: str, options: str, mount: Path, cwd: Path, *args: str, keep: Path | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = _tmpfs_script(size, options, [sys.executable, "-m", "ferfast.train", *args], mount, keep)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_disk_full_says_so_and_keeps_the_last_checkpoint(pipeline, tmp_path):
    work, _ = pipeline
    mount = tmp_path / "small"
    mount.mkdir()
    if (why := _can_mount_tmpfs(mount)) is not None:
        pytest.skip(why)
    # stage 1's checkpoint of vit_demo is ~13 MB: the first epoch's fits in 20 MB, the second's temp file does not
    left = tmp_path / "left"
    r = _cli_on_tmpfs(
        "20m",
        "rw",
        mount,
        work,
        "finetune",
        "--data.root",
        "faces",
        "--model.pretrained",
        "runs/mae/pretrain/checkpoint-last.pth",
        "--run.output_dir",
        f"{mount}/run",
        "--config",
        "budget.yaml",
        "--run.save_every",
        "100",
        "--run.keep_checkpoints",
        "1",
        keep=left,
    )
    message = assert_one_line_error(r, "finetune", 1, "no space left on device", str(mount))
    assert "checkpoint" in message
    stage1 = left / "run" / "stage1"
    names = sorted(p.name for p in stage1.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names  # the failed write left no partial file
    ckpt = torch.load(stage1 / "checkpoint-last.pth", map_location="cpu", weights_only=False)
    assert ckpt["epochs_done"] == 1  # the first epoch's checkpoint survived the failed second write


def test_read_only_output_folder_is_one_line_exit_1(pipeline, tmp_path):
    work, _ = pipeline
    mount = tmp_path / "ro"
    mount.mkdir()
    if (why := _can_mount_tmpfs(mount)) is not None:
        pytest.skip(why)
    r = _cli_on_tmpfs(
        "1m",
        "ro",
        mount,
        work,
        "finetune",
        "--data.root",
        "faces",
        "--run.output_dir",
        f"{mount}/run",
        "--config",
        "budget.yaml",
    )
    assert_one_line_error(r, "finetune", 1, str(mount), "Read-only file system")


def test_kill_9_mid_epoch_resumes_at_the_step(pipeline, tmp_path):
    """A stage killed with SIGKILL after a mid-epoch checkpoint resumes from that step: the log holds every step
    once and the run ends as an uninterrupted one does."""
    work, _ = pipeline
    shutil.copy(work / "budget.yaml", tmp_path)
    (tmp_path / "faces").symlink_to(work / "faces")
    mae = str(work / "runs/mae/pretrain/checkpoint-last.pth")
    args = [
        "finetune",
        "--data.root",
        "faces",
        "--model.pretrained",
        mae,
        "--run.output_dir",
        "run",
        "--config",
        "budget.yaml",
        "--data.labeled_fraction",
        "1.0",
        "--stage1.epochs",
        "1",
        "--run.save_every_steps",
        "2",
        "--run.log_every",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferfast.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "run/stage1/checkpoint-last.pth"
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                step = int(torch.load(last, map_location="cpu", weights_only=False).get("step") or 0)
            except Exception:  # being replaced right now
                step = 0
            if step >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before a mid-epoch checkpoint was seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    steps_per_epoch = 112 // 8
    assert 0 < step < steps_per_epoch
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and f"step {step}" in r.stdout
    steps = log_steps(tmp_path / "run/stage1/log.jsonl")
    assert steps == sorted(set(steps)), steps  # every logged step once, in order
    assert steps[-1] == steps_per_epoch - 1
