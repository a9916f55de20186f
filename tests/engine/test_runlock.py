"""The output folder's lock: a second process is refused at once, naming the holder; the lock goes with its
holder (a normal exit or kill -9); the lock is re-entrant within a process; a failed run leaves no folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from ferfast.engine.runlock import LOCK_FILE, RunLockedError, lock_holder, run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from ferfast.engine.runlock import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold(folder, seconds=60.0) -> subprocess.Popen:
    """A second process holding ``folder``'s lock (returns once it holds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line.strip() == "locked", f"the holder did not start: {line!r} (exit {proc.poll()})"
    return proc


def test_a_second_process_is_refused_naming_the_holder_until_it_is_killed(tmp_path):
    folder = tmp_path / "run" / "stage1"
    proc = hold(folder)
    try:
        assert lock_holder(folder)["pid"] == proc.pid
        with pytest.raises(RunLockedError) as info, run_lock(folder):
            pytest.fail("locked twice")
        message = str(info.value)
        assert f"pid {proc.pid}" in message and socket.gethostname() in message and str(folder) in message
        assert info.value.folder == folder and info.value.holder["pid"] == proc.pid
        assert (folder / LOCK_FILE).is_file()  # a refused run leaves the holder's lock alone
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up in the holder: the kernel releases the flock
        proc.wait()
    assert (folder / LOCK_FILE).is_file()  # the killed holder's file is left, but its lock is gone
    with run_lock(folder) as got:
        assert got == folder and lock_holder(folder)["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_holder_finishes(tmp_path):
    proc = hold(tmp_path, seconds=0.0)
    assert proc.wait(timeout=60) == 0
    assert not (tmp_path / LOCK_FILE).exists()
    with run_lock(tmp_path):
        pass


def test_released_after_the_block_even_on_an_error_and_reentrant(tmp_path):
    with pytest.raises(KeyError), run_lock(tmp_path):
        raise KeyError("boom")
    with run_lock(tmp_path):
        with run_lock(tmp_path):  # the same process again (ferfast.finetune around a driver): no deadlock
            pass
        assert (tmp_path / LOCK_FILE).is_file()  # still held by the outer block
        proc = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "0"], capture_output=True, text=True)
        assert proc.returncode != 0 and f"pid {os.getpid()}" in proc.stderr
    assert not (tmp_path / LOCK_FILE).exists()
    assert hold(tmp_path, seconds=0.0).wait(timeout=60) == 0  # and another process gets it


def test_a_failed_run_leaves_no_folder_behind(tmp_path):
    folder = tmp_path / "new" / "stage1"
    with pytest.raises(ValueError), run_lock(folder):
        assert (folder / LOCK_FILE).is_file()
        raise ValueError("bad settings")
    assert not (tmp_path / "new").exists()
    with run_lock(folder):
        (folder / "log.jsonl").write_text("{}\n")
    assert (folder / "log.jsonl").is_file() and not (folder / LOCK_FILE).exists()  # what the run wrote stays


def test_an_output_folder_that_is_a_file_names_it(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(OSError, match=r"cannot create or lock the output folder .*out"), run_lock(tmp_path / "out"):
        pass


def _rank(rank: int, world_size: int, port: int, folder: str, out_dir: str) -> None:
    """One torchrun-like process: the lock nested twice (as finetune around a driver), then on a held folder."""
    import json

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from ferfast.engine.dist import barrier, distributed

    result = {}
    with distributed(backend="gloo"):
        with run_lock(os.path.join(folder, "mine")), run_lock(os.path.join(folder, "mine")):
            result["holder"] = lock_holder(os.path.join(folder, "mine"))
            barrier()
        try:
            with run_lock(os.path.join(folder, "held")):
                result["held"] = "locked"
        except RuntimeError as e:  # RunLockedError on rank 0, a RuntimeError quoting it on the others
            result["held"] = str(e)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)


def test_under_torch_distributed_rank_0_locks_and_all_ranks_fail_together(tmp_path):
    import json

    import torch.multiprocessing as mp

    from tests.engine.test_dist import free_port

    proc = hold(tmp_path / "held")
    try:
        mp.spawn(_rank, args=(2, free_port(), str(tmp_path), str(tmp_path)), nprocs=2, join=True)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["holder"]["pid"] == ranks[1]["holder"]["pid"] != proc.pid  # rank 0's pid: one lock, rank 0's
    assert all(f"locked by pid {proc.pid}" in r["held"] for r in ranks)
    assert ranks[1]["held"].startswith("rank 0 could not lock")
    assert not (tmp_path / "mine").exists()
