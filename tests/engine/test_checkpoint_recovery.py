"""Checkpoints a killed run can trust (issue 13, items 4-5): a damaged ``checkpoint-last.pth`` falls back to the
newest numbered checkpoint that loads, temporary files of an interrupted save are removed at start-up, a checkpoint
holding Python objects is refused with a message that names the file and does not advise lifting the protection,
and a full disk says "no space left on device" with the path, leaving the previous checkpoint intact."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn

from ferfast import _io
from ferfast.engine import checkpoint as checkpoint_module
from ferfast.engine.checkpoint import (
    CorruptCheckpointError,
    DiskFullError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    save_epoch_checkpoint,
)
from tests.engine.test_loop import faces, params, run  # noqa: F401  (faces: a module-scoped fixture)

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """An arbitrary class: unpickling it is what ``weights_only=True`` refuses."""


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ damaged last


@pytest.fixture(scope="module")
def reference(faces, tmp_path_factory):  # noqa: F811
    """An uninterrupted 4-epoch run and a run "killed" after 2 epochs (a numbered checkpoint per epoch)."""
    full_model, _, full = run(faces, tmp_path_factory.mktemp("full"), 4, cfg={"keep": None})
    killed = tmp_path_factory.mktemp("killed")
    run(faces, killed, 2, cfg={"keep": None})
    return params(full_model), full, killed


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder that keeps its hard links (``checkpoint-2.pth`` is ``checkpoint-last.pth``'s twin)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def test_a_replaced_truncated_last_checkpoint_resumes_from_the_newest_numbered(faces, reference, tmp_path):  # noqa: F811
    full_params, full, killed = reference
    folder = copy_run(killed, tmp_path / "run")
    last = folder / "checkpoint-last.pth"
    data = last.read_bytes()
    last.unlink()  # a new file (e.g. a copy cut short): checkpoint-2.pth, its hard-linked twin, stays intact
    last.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"checkpoint-last\.pth is .*truncated.*resuming from .*checkpoint-2\.pth"):
        model, _, rest = run(faces, folder, 4, cfg={"keep": None})
    assert [r["epoch"] for r in rest] == [3.0, 4.0]  # epoch 2 was the last intact one
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[2:]]
    assert torch.equal(params(model), full_params)
    assert load_checkpoint(last)["epoch"] == 3  # rewritten whole by the resumed run


def test_an_emptied_last_checkpoint_goes_back_as_far_as_needed(faces, reference, tmp_path):  # noqa: F811
    full_params, full, killed = reference
    folder = copy_run(killed, tmp_path / "run")
    last, two = folder / "checkpoint-last.pth", folder / "checkpoint-2.pth"
    twins = os.path.samefile(last, two)  # a hard link (link_checkpoint), unless the file system copies
    last.write_bytes(b"")  # emptied in place: its hard-linked twin checkpoint-2.pth is emptied too
    used, start = ("checkpoint-1", 1) if twins else ("checkpoint-2", 2)
    with pytest.warns(UserWarning, match=rf"checkpoint-last\.pth is empty.*resuming from .*{used}\.pth") as rec:
        model, _, rest = run(faces, folder, 4, cfg={"keep": None})
    message = str(next(w.message for w in rec if "damaged" in str(w.message)))
    assert ("checkpoint-2.pth is empty" in message) == twins  # every skipped file is named
    assert [r["epoch"] for r in rest] == [float(e) for e in range(start + 1, 5)]
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[start:]]
    assert torch.equal(params(model), full_params)


def test_no_intact_checkpoint_is_one_error_naming_every_file(faces, reference, tmp_path):  # noqa: F811
    _, _, killed = reference
    folder = copy_run(killed, tmp_path / "run")
    for name in ("checkpoint-last.pth", "checkpoint-1.pth", "checkpoint-2.pth"):
        (folder / name).write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="no checkpoint there loads") as err:
        run(faces, folder, 4, cfg={"keep": None})
    text = str(err.value)
    assert all(n in text for n in ("checkpoint-last.pth is empty", "checkpoint-2.pth", "checkpoint-1.pth"))
    assert isinstance(err.value, ValueError)
    assert load_latest_checkpoint(tmp_path / "nothing-here") is None


def test_a_refused_checkpoint_in_the_run_folder_is_not_skipped(faces, reference, tmp_path):  # noqa: F811
    _, _, killed = reference
    folder = copy_run(killed, tmp_path / "run")
    (folder / "checkpoint-last.pth").unlink()
    torch.save({"model": {}, "epoch": 1, "x": Payload()}, folder / "checkpoint-last.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint-last\.pth holds Python objects"):
        run(faces, folder, 4, cfg={"keep": None})  # someone else's file: no silent fallback to checkpoint-2
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint-last\.pth"):
        run(faces, tmp_path / "other", 4, resume_from=folder / "checkpoint-last.pth")


# ------------------------------------------------------------------------------------- stale temp files


KILLED_SAVE = """
import os, signal, sys
import torch
from torch import nn
from ferfast.engine import checkpoint as ck

def dying_save(obj, fh):
    fh.write(b"PK\\x03\\x04 half a zip file")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the write: no except clause runs

ck.torch.save = dying_save
ck.save_checkpoint(sys.argv[1], model=nn.Linear(2, 2), epoch=1, args={})
"""


def test_a_kill_during_a_save_leaves_a_temp_file_that_the_next_start_removes(faces, tmp_path):  # noqa: F811
    folder = tmp_path / "run"
    run(faces, folder, 1)
    before = (folder / "checkpoint-last.pth").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_SAVE), str(folder / "checkpoint-last.pth")],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    left = [n for n in names(folder) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".checkpoint-last.pth.")  # write_atomic's naming
    assert (folder / "checkpoint-last.pth").read_bytes() == before  # the old checkpoint is intact
    (folder / ".checkpoint-3.pth.link.tmp").write_bytes(b"x")  # link_checkpoint's temp file
    others = [".config.yaml.abcd1234.tmp", "notes.tmp", ".checkpoint-last.pth.tmp", ".checkpoint-x.pth.abcd1234.tmp"]
    for name in others:  # not ours, or not a checkpoint's: kept
        (folder / name).write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"removed 2 temporary files left in .* by an interrupted checkpoint write"):
        _, _, rest = run(faces, folder, 2)
    assert [r["epoch"] for r in rest] == [2.0]  # resumed after the removal
    assert [n for n in names(folder) if n.endswith(".tmp")] == sorted(others)


def test_remove_stale_temp_files_matches_only_checkpoint_temp_names(tmp_path):
    ours = [".checkpoint-last.pth.k3j_x9ab.tmp", ".checkpoint-12.pth.abcdefgh.tmp", ".checkpoint-best.pth.link.tmp"]
    theirs = [
        ".checkpoint-last.pth.K3J.tmp",
        "checkpoint-last.pth.abcdefgh.tmp",
        ".split.json.abcdefgh.tmp",
        ".checkpoint-last.pth.abcdefgh.tmp.bak",
        "checkpoint-last.pth",
    ]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ours[0]).write_bytes(b"")  # not in the run folder itself
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == sorted(ours)
    assert names(tmp_path) == sorted([*theirs, "sub"])
    assert remove_stale_temp_files(tmp_path / "missing") == []


# ----------------------------------------------------------------------------------- refused checkpoints


def test_a_checkpoint_holding_python_objects_is_refused_without_advising_to_lift_the_protection(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert str(path) in text and "Payload" in text and "refuses to unpickle" in text and "run arbitrary code" in text
    assert "weights_only" not in text and "safe_globals" not in text  # torch's two ways to lift it are not passed on
    assert err.value.__cause__ is None and err.value.__suppress_context__  # nor in a chained traceback
    assert err.value.path == path


def test_garbage_is_corrupt_not_refused_and_torch_advice_is_dropped(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError, match=r"garbage\.pth is damaged or not a PyTorch checkpoint") as err:
        load_checkpoint(garbage)
    assert "weights_only" not in str(err.value)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=r"empty\.pth is empty"):
        load_checkpoint(empty)


# --------------------------------------------------------------------------------------------- disk full


def first_save(tmp_path: Path) -> tuple[Path, bytes]:
    path = save_checkpoint(tmp_path / "checkpoint-last.pth", model=small_model(), epoch=1, args={})
    return path, path.read_bytes()


def assert_disk_full(err: pytest.ExceptionInfo, path: Path, before: bytes) -> None:
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert f"no space left on device: cannot write {path}" in str(err.value)
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert names(path.parent) == [path.name]  # no temp file left behind


def test_enospc_from_a_write_says_no_space_left(tmp_path, monkeypatch):
    path, before = first_save(tmp_path)

    def full_save(obj, fh):
        fh.write(b"PK\x03\x04 some bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_save)
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(path, model=small_model(), epoch=2, args={})
    assert_disk_full(err, path, before)


def test_torchs_unexpected_pos_over_a_full_disk_says_no_space_left(tmp_path, monkeypatch):
    """torch's zip writer turns the file object's OSError into ``enforce fail ... unexpected pos``."""
    path, before = first_save(tmp_path)
    real_save = torch.save

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 200:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def flush(self):
            self.fh.flush()

    monkeypatch.setattr(checkpoint_module.torch, "save", lambda obj, fh: real_save(obj, FullDisk(fh)))
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(path, model=small_model(), epoch=2, args={})
    assert "unexpected pos" in str(err.value.__cause__)  # what torch said
    assert_disk_full(err, path, before)


def test_a_bare_unexpected_pos_counts_as_disk_full_only_when_the_disk_is_full(tmp_path, monkeypatch):
    path, before = first_save(tmp_path)

    def short_write(obj, fh):
        fh.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1280 vs 1174")

    monkeypatch.setattr(checkpoint_module.torch, "save", short_write)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_io.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 4096))
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(path, model=small_model(), epoch=2, args={})
    assert_disk_full(err, path, before)
    monkeypatch.setattr(_io.shutil, "disk_usage", lambda p: usage(1 << 30, 0, 1 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos") as err:  # plenty of room: not called a full disk
        save_checkpoint(path, model=small_model(), epoch=2, args={})
    assert not isinstance(err.value, DiskFullError) and names(tmp_path) == [path.name]


def test_enospc_at_fsync_says_no_space_left(tmp_path, monkeypatch):
    path, before = first_save(tmp_path)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", fsync)
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(path, model=small_model(), epoch=2, args={})
    assert_disk_full(err, path, before)


def test_no_room_for_the_temp_file_says_no_space_left(tmp_path, monkeypatch):
    path, before = first_save(tmp_path)

    def mkstemp(**kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.tempfile, "mkstemp", mkstemp)
    with pytest.raises(DiskFullError) as err:
        save_checkpoint(path, model=small_model(), epoch=2, args={})
    assert_disk_full(err, path, before)


def test_other_write_errors_pass_through_unchanged(tmp_path, monkeypatch):
    path, before = first_save(tmp_path)

    def denied(obj, fh):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint_module.torch, "save", denied)
    with pytest.raises(PermissionError) as err:
        save_checkpoint(path, model=small_model(), epoch=2, args={})
    assert not isinstance(err.value, DiskFullError)
    assert path.read_bytes() == before and names(tmp_path) == [path.name]


def test_a_full_disk_during_fit_keeps_the_last_checkpoint(faces, tmp_path, monkeypatch):  # noqa: F811
    folder = tmp_path / "run"
    run(faces, folder, 1)
    before = (folder / "checkpoint-last.pth").read_bytes()

    def full_save(obj, fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_save)
    with pytest.raises(DiskFullError, match=r"no space left on device: cannot write .*run/checkpoint-last\.pth"):
        run(faces, folder, 2)
    monkeypatch.undo()
    assert (folder / "checkpoint-last.pth").read_bytes() == before
    assert not [n for n in names(folder) if n.endswith(".tmp")]


def test_disk_full_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(DiskFullError("/x/checkpoint-last.pth", "why")))
    assert isinstance(err, DiskFullError)
    assert str(err) == "no space left on device: cannot write /x/checkpoint-last.pth (why)"
    assert err.errno == errno.ENOSPC and err.filename == "/x/checkpoint-last.pth"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root and a kernel that lets this process mount; otherwise the test is skipped)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_real_full_disk_says_no_space_left(tiny_tmpfs):
    path = save_checkpoint(tiny_tmpfs / "checkpoint-last.pth", model=small_model(), epoch=1, args={})
    before = path.read_bytes()
    with pytest.raises(DiskFullError) as err:
        save_epoch_checkpoint(tiny_tmpfs, epoch=2, model=nn.Linear(600, 600), args={})  # 1.4 MB > 1 MiB
    assert_disk_full(err, path, before)
