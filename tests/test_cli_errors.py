"""The CLI's failures (issue 13, item 4): one line naming the option or the file, exit 2 for usage, 1 at
run time, 130 on Ctrl-C; a bug keeps its traceback; ``--debug`` shows every traceback.

A few real subprocesses of ``python -m ferfast.train`` (each pays the CLI's import), then the
classification table in-process, with a stage command patched to raise each error class.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferfast import cli
from ferfast._io import DiskFullError
from ferfast.config import ConfigError
from ferfast.data.check import UnreadableImageError
from ferfast.data.splits import SplitMismatchError
from ferfast.engine.logging import NonFiniteLossError
from ferfast.engine.runlock import RunLockedError
from ferfast.models.checkpoint import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "ferfast.train", *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_subprocess_missing_data_root_is_one_line_exit_1(tmp_path):
    missing = tmp_path / "no_such_root"
    r = _cli("finetune", "--data.root", str(missing), "--run.output_dir", str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr
    err = _lines(r.stderr)
    assert len(err) == 1 and err[0].startswith("python -m ferfast.train finetune: error: ")
    assert str(missing) in r.stderr and "Traceback" not in r.stderr


def test_subprocess_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "no_such_root"
    r = _cli("finetune", "--data.root", str(missing), "--debug")
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "FileNotFoundError" in r.stderr
    assert _lines(r.stderr)[-1].startswith("python -m ferfast.train finetune: error:")


def test_subprocess_bad_option_value_and_unknown_model_exit_2(tmp_path):
    r = _cli("finetune", "--stage1.epochs", "abc")
    assert r.returncode == 2 and len(_lines(r.stderr)) == 1 and "--stage1.epochs" in r.stderr
    r = _cli("finetune", "--model.name", "vit_dmeo", "--data.root", str(tmp_path))
    assert r.returncode == 2 and len(_lines(r.stderr)) == 1
    assert "--model.name" in r.stderr and "vit_dmeo" in r.stderr and "Traceback" not in r.stderr


def test_subprocess_output_dir_that_is_a_file_exit_1(tmp_path):
    out = tmp_path / "a_file"
    out.write_text("keep me")
    r = _cli("data", "synth", str(out), "--train", "7", "--test", "7", "--unlabeled", "0", "--size", "32")
    assert r.returncode == 1, r.stderr
    assert len(_lines(r.stderr)) == 1 and "argument OUT" in r.stderr and str(out) in r.stderr
    assert "Traceback" not in r.stderr and out.read_text() == "keep me"


# ---- the classification table, in-process ------------------------------------------------------------

USAGE, RUNTIME = 2, 1

CASES = [
    (ConfigError("stage1.epochs", "must be >= 1"), USAGE),
    (ValueError("unknown model name 'vit_x'; valid names: vit_demo"), USAGE),
    (TypeError("expected a number, got 'x'"), USAGE),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/raf"), RUNTIME),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/out"), RUNTIME),
    (PermissionError(errno.EACCES, "Permission denied", "/out"), RUNTIME),
    (DiskFullError("/out/checkpoint-last.pth"), RUNTIME),
    (UnreadableImageError("/data/a.jpg", "truncated"), RUNTIME),
    (RunLockedError(Path("runs/x"), {"pid": 42}), RUNTIME),
    (SplitMismatchError("the split of runs/x differs from this run's"), RUNTIME),
    (OSError(errno.ENOSPC, "No space left on device", "/out/log.jsonl"), RUNTIME),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/out"), RUNTIME),
    (MemoryError("cannot allocate 8 GiB"), RUNTIME),
    (NonFiniteLossError("loss is nan at step 3"), RUNTIME),
    (CheckpointError("checkpoint x.pth is not a ferfast checkpoint"), RUNTIME),
    (CorruptCheckpointError("checkpoint x.pth is damaged"), RUNTIME),
    (UnsafeCheckpointError("checkpoint x.pth needs pickle, refused"), RUNTIME),
]


def _raising(exc: BaseException):
    def run(args):
        raise exc

    return run


@pytest.fixture
def patched(monkeypatch):
    """``finetune`` runs a function that raises the given exception (nothing else of the stage runs)."""
    import ferfast.cli.stages as stages

    def patch(exc: BaseException) -> None:
        monkeypatch.setattr(stages, "_run", _raising(exc))

    return patch


@pytest.mark.parametrize("exc,status", CASES, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(CASES)])
def test_user_errors_are_one_line_with_their_status(patched, capsys, exc, status):
    patched(exc)
    assert cli.main(["finetune"]) == status
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("python -m ferfast.train finetune: error: ")
    assert "Traceback" not in err[0]


def test_message_is_the_first_line_and_names_the_file(patched, capsys):
    patched(FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/raf"))
    cli.main(["finetune"])
    assert "/data/raf" in capsys.readouterr().err
    patched(SplitMismatchError("the split differs\nsecond line of detail"))
    cli.main(["finetune"])
    assert _lines(capsys.readouterr().err) == ["python -m ferfast.train finetune: error: the split differs"]


def test_a_chained_error_reports_the_known_one_once(patched, capsys):
    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.jpg")
        except FileNotFoundError as inner:
            raise RuntimeError("the data loader failed") from inner
    except RuntimeError as outer:
        patched(outer)
    assert cli.main(["finetune"]) == RUNTIME
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "/data/x.jpg" in err[0] and "data loader" not in err[0]


def test_keyboard_interrupt_exits_130_with_one_line(patched, capsys):
    patched(KeyboardInterrupt())
    assert cli.main(["finetune"]) == 130
    assert _lines(capsys.readouterr().err) == ["python -m ferfast.train finetune: error: interrupted"]


@pytest.mark.parametrize(
    "exc", [AssertionError("bad state"), RuntimeError("CUDA kernel failed"), IndexError("x"), KeyError("k")]
)
def test_internal_errors_keep_the_traceback_and_ask_for_a_report(patched, capsys, exc):
    patched(exc)
    assert cli.main(["finetune"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and type(exc).__name__ in err
    assert "please report it" in _lines(err)[-1]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_of_a_user_error(patched, capsys, where):
    patched(NonFiniteLossError("runs/x: loss is nan"))
    argv = ["--debug", "finetune"] if where == "before" else ["finetune", "--debug"]
    assert cli.main(argv) == RUNTIME
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "NonFiniteLossError" in err
    assert _lines(err)[-1] == "python -m ferfast.train finetune: error: runs/x: loss is nan"


def test_bad_options_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", "--stage1.epochs", "0x"])
    assert e.value.code == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "--stage1.epochs" in err[0]


def test_the_python_api_still_raises(tmp_path):
    from ferfast.data.formats import detect_format

    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing")
