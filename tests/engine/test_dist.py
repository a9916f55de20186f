"""Distributed helpers: a single process without torchrun, and a real two-process gloo group on CPU."""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ferfast.engine import cleanup, get_rank, get_world_size, init_distributed, is_main_process
from ferfast.engine.dist import (
    all_gather_objects,
    all_gather_tensor,
    all_reduce_mean,
    barrier,
    broadcast_object,
    distributed,
    is_distributed,
)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_without_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.distributed) == (0, 1, 0, True, False)
    assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert get_rank() == 0 and get_world_size() == 1 and is_main_process()
    t = torch.tensor([1.0, 2.0])
    out = all_reduce_mean(t)
    assert torch.equal(out, t) and out is not t
    payload = {"split": [1, 2, 3]}
    assert broadcast_object(payload) is payload
    assert torch.equal(all_gather_tensor(t), t[None]) and all_gather_objects(payload) == [payload]
    with distributed() as inside:
        assert not inside.distributed
    barrier(), cleanup()  # no-ops


def test_inconsistent_environment_is_named(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        init_distributed()
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK"):
        init_distributed()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed()
    with pytest.raises(TypeError, match="tensor"):
        all_reduce_mean([1.0])


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One torchrun-like process: the environment torchrun sets, then the helpers."""
    import os

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    with distributed(backend="gloo") as info:  # gloo also where a GPU exists: two ranks, maybe one GPU
        assert init_distributed().rank == rank  # joining again returns the group this block made
        mean = all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * rank]))
        int_mean = all_reduce_mean(torch.tensor([rank * 3], dtype=torch.int64))
        obj = broadcast_object({"seed": 7, "labeled": [3, 1, 4]} if rank == 0 else None)
        gathered = all_gather_tensor(torch.tensor([rank, 10 + rank]))
        objects = all_gather_objects({"rank": rank})
        barrier()
        result = {
            "info": [info.rank, info.world_size, info.local_rank, info.is_main, get_rank(), get_world_size()],
            "device": info.device.type,
            "mean": mean.tolist(),
            "int_mean": int_mean.tolist(),
            "obj": obj,
            "gathered": gathered.tolist(),
            "objects": objects,
        }
    result["left"] = not is_distributed()  # the block left the group it made
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)


def test_two_process_gloo_group(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["info"] == [rank, world, rank, rank == 0, rank, world]
        assert r["mean"] == [1.5, 5.0]  # ([1, 0] + [2, 10]) / 2 on both ranks
        assert r["int_mean"] == [1.5]  # integer tensors are averaged as floats
        assert r["obj"] == {"seed": 7, "labeled": [3, 1, 4]}  # rank 1 passed None and got rank 0's object
        assert r["gathered"] == [[0, 10], [1, 11]] and r["objects"] == [{"rank": 0}, {"rank": 1}]
        assert r["left"]
        if not torch.cuda.is_available():
            assert r["device"] == "cpu"
