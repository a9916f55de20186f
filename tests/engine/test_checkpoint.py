"""Checkpoints: MAE's dict round trip, weights_only loads, atomic writes, RNG restore, retention, exact resume."""

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ferfast.engine import (
    LAST_CHECKPOINT,
    ModelEma,
    cosine_with_warmup,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unwrap_model,
)
from ferfast.engine import checkpoint as checkpoint_module
from ferfast.engine.checkpoint import (
    UnsafeCheckpointError,
    checkpoint_path,
    load_latest_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_epoch_checkpoint,
    strip_wrapper_prefixes,
)
from ferfast.engine.optim import set_lr

CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


@dataclasses.dataclass
class Config:
    lr: float = 1.5e-4
    epochs: int = 100
    milestones: tuple = (20, 40)
    data_path: Path = Path("/data/rafdb")
    dtype: torch.dtype = torch.bfloat16


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 7))


def train_steps(model, optimizer, n, ema=None):
    losses = []
    model.train()
    for _ in range(n):
        x = torch.randn(4, 8)
        y = torch.randint(0, 7, (4,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
    return losses


def test_round_trip_model_optimizer_ema_args(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    ema = ModelEma(model, decay=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train_steps(model, opt, 3, ema)
    path = save_checkpoint(
        tmp_path / "ckpt.pth",
        model=model,
        optimizer=opt,
        epoch=7,
        step=12,
        scaler=scaler,
        ema=ema,
        args=Config(),
        class_names=CLASSES,
        extra={"best_acc": 0.875},
    )
    ckpt = load_checkpoint(path)
    assert set(ckpt) >= {"model", "optimizer", "epoch", "scaler", "ema", "args", "step", "class_names", "rng"}
    assert ckpt["epoch"] == 7 and ckpt["step"] == 12 and ckpt["best_acc"] == 0.875
    assert ckpt["class_names"] == CLASSES
    assert ckpt["args"] == {
        "lr": 1.5e-4,
        "epochs": 100,
        "milestones": [20, 40],
        "data_path": "/data/rafdb",
        "dtype": "torch.bfloat16",
    }
    assert ckpt["scaler"]["scale"] == 1024.0
    assert ckpt["ema_num_updates"] == 3

    restored = make_model()
    restored.load_state_dict(ckpt["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    ema2 = ModelEma(make_model(), decay=0.9)
    ema2.load_state_dict(ckpt["ema"], num_updates=ckpt["ema_num_updates"])
    for k, v in ema.state_dict().items():
        assert torch.equal(ema2.state_dict()[k], v), k
    assert ema2.num_updates == 3

    # the optimizer state continues identically: one more step from both gives the same weights
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 3
    model.eval(), restored.eval()
    x, y = torch.randn(5, 8), torch.randint(0, 7, (5,))
    for m, o in ((model, opt), (restored, opt2)):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for p, q in zip(model.parameters(), restored.parameters()):
        assert torch.equal(p, q)


def test_plain_weights_only_load_reads_it(tmp_path):
    path = save_checkpoint(tmp_path / "c.pth", model=make_model(), epoch=0, args={"seed": 0}, class_names=CLASSES)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["args"] == {"seed": 0} and ckpt["optimizer"] is None and ckpt["ema"] is None
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)


def test_wrapped_models_save_plain_keys(tmp_path):
    model = make_model()
    wrapped = nn.DataParallel(model)  # CPU-only DataParallel is a plain wrapper with a ``module.`` prefix
    assert next(iter(wrapped.state_dict())).startswith("module.")
    assert unwrap_model(wrapped) is model
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "c.pth", model=wrapped, epoch=1, args={}))
    assert list(ckpt["model"]) == list(model.state_dict())

    compiled_keys = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    assert list(strip_wrapper_prefixes(compiled_keys)) == list(model.state_dict())
    with pytest.raises(ValueError, match="two entries"):
        strip_wrapper_prefixes({"module.w": 1, "w": 2})


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-last.pth"
    save_checkpoint(path, model=make_model(), epoch=1, args={"run": "a"})
    before = path.read_bytes()

    def dying_save(obj, fh):
        fh.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the process is killed in the middle of the write

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=make_model(), epoch=2, args={"run": "a"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pth"]  # no temp file left behind


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_checkpoint(missing)
    good = save_checkpoint(tmp_path / "good.pth", model=make_model(), epoch=0, args={})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth"):
        load_checkpoint(truncated)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "args": Config()}, unsafe)  # an arbitrary class: weights_only refuses it
    with pytest.raises(UnsafeCheckpointError, match=r"unsafe\.pth holds Python objects .*Config.*refuses") as err:
        load_checkpoint(unsafe)
    assert "weights_only" not in str(err.value)  # torch's advice to lift the protection is not passed on
    assert isinstance(err.value, ValueError)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(TypeError, match=r"args\['cb'\]"):
        save_checkpoint(tmp_path / "c.pth", model=make_model(), epoch=0, args={"cb": object()})
    with pytest.raises(ValueError, match="extra key 'epoch'"):
        save_checkpoint(tmp_path / "c.pth", model=make_model(), epoch=0, args={}, extra={"epoch": 3})
    with pytest.raises(TypeError, match="epoch"):
        save_checkpoint(tmp_path / "c.pth", model=make_model(), epoch=1.5, args={})
    with pytest.raises(TypeError, match="model"):
        save_checkpoint(tmp_path / "c.pth", model=[1, 2], epoch=0, args={})
    assert not (tmp_path / "c.pth").exists()


def draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), random.random())


def test_rng_restore_repeats_the_next_random_numbers(tmp_path):
    np.random.randn(1)  # leaves numpy's cached Gaussian set, so that part of the state matters too
    random.gauss(0, 1)
    path = save_checkpoint(tmp_path / "c.pth", model=make_model(), epoch=0, args={})
    expected = draws()
    torch.manual_seed(999), np.random.seed(999), random.seed(999)
    assert draws() != expected
    restore_rng(load_checkpoint(path)["rng"])
    assert draws() == expected
    with pytest.raises(ValueError, match="rng state"):
        restore_rng({"numpy": {}})


def test_epoch_files_retention_and_latest(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "not-there") is None
    model = make_model()
    for epoch in range(5):
        save_epoch_checkpoint(tmp_path, epoch=epoch, keep=2, model=model, args={"e": epoch})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-3.pth", "checkpoint-4.pth", LAST_CHECKPOINT]
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path)
    assert load_checkpoint(latest_checkpoint(tmp_path))["epoch"] == 4
    # the epoch files keep their own content after checkpoint-last.pth is replaced
    assert load_checkpoint(checkpoint_path(tmp_path, 3))["args"] == {"e": 3}

    checkpoint_path(tmp_path).unlink()
    for epoch in (9, 10):  # numeric order, not string order
        save_checkpoint(checkpoint_path(tmp_path, epoch), model=model, epoch=epoch, args={})
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 10)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [3, 4, 9, 10]
    removed = prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in removed] == ["checkpoint-3.pth", "checkpoint-4.pth", "checkpoint-9.pth"]
    save_epoch_checkpoint(tmp_path, epoch=11, keep=0, model=model, args={})
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_CHECKPOINT]
    with pytest.raises(ValueError, match="keep"):
        prune_checkpoints(tmp_path, keep=-1)


def run(model, opt, ema, steps, start, total):
    losses = []
    for s in range(start, start + steps):
        set_lr(opt, cosine_with_warmup(s, total, 2, 1e-2))
        losses += train_steps(model, opt, 1, ema)
    return losses


def test_resume_continues_exactly(tmp_path):
    """A killed run resumed from its checkpoint gives the same losses as an uninterrupted one (CPU, fixed seed)."""
    total = 8
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    ema = ModelEma(model, decay=0.5)
    uninterrupted = run(model, opt, ema, total, 0, total)

    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    ema = ModelEma(model, decay=0.5)
    first = run(model, opt, ema, 3, 0, total)
    save_epoch_checkpoint(tmp_path, epoch=0, step=3, model=model, optimizer=opt, ema=ema, args={})
    del model, opt, ema  # the process dies

    torch.manual_seed(12345)  # a fresh process: other initial weights, other random state
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    ema = ModelEma(model, decay=0.5)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    ema.load_state_dict(ckpt["ema"], num_updates=ckpt["ema_num_updates"])
    restore_rng(ckpt["rng"])
    rest = run(model, opt, ema, total - ckpt["step"], ckpt["step"], total)
    assert first + rest == uninterrupted
    assert all(math.isfinite(v) for v in uninterrupted)


def mapped_file(t: torch.Tensor) -> str | None:
    """The file that the memory holding ``t`` is mapped from (``/proc/self/maps``), or None for plain memory."""
    address = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            return rest[4] if len(rest) == 5 and rest[4].startswith("/") else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc/self/maps")
def test_mmap_load_maps_the_tensors_instead_of_reading_them(tmp_path):
    """``mmap=True`` (the API's look at a checkpoint's config before ``fit`` loads it) gives the same entries,
    with the tensors mapped from the file; a legacy (non-zip) file is read whole, not refused."""
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / LAST_CHECKPOINT
    weights = torch.arange(1 << 16, dtype=torch.float32)
    torch.save({"model": {"w": weights}, "config": {"model": {"name": "vit_tiny"}}, "epoch": 3}, path)
    mapped, read = load_checkpoint(path, mmap=True), load_checkpoint(path)
    assert mapped["config"] == read["config"] and mapped["epoch"] == read["epoch"] == 3
    assert mapped_file(mapped["model"]["w"]) == str(path)
    assert mapped_file(read["model"]["w"]) is None
    torch.testing.assert_close(mapped["model"]["w"], weights, rtol=0, atol=0)
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {"w": weights}, "epoch": 1}, legacy, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_checkpoint(legacy, mmap=True)["model"]["w"], weights, rtol=0, atol=0)
    found = load_latest_checkpoint(tmp_path / "run", mmap=True)
    assert found is not None and found[0] == path
    assert mapped_file(found[1]["model"]["w"]) == str(path)
