"""The epoch loop: exact resume from the last checkpoint, the non-finite-loss guard, accumulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferfast.data import AugmentConfig, build_loader, open_dataset, write_synthetic_dataset
from ferfast.data.synthetic import SyntheticFaceConfig
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import MetricLogger, NonFiniteLossError
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.schedule import cosine_with_warmup
from ferfast.engine.steps import StepOutput


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    write_synthetic_dataset(out, num_train=48, num_test=14, num_unlabeled=7, num_identities=8,
                            num_unlabeled_identities=1, config=SyntheticFaceConfig(size=32), workers=1)
    return open_dataset("synthetic", out, "train")


def make(faces, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 7))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = build_loader("stage1", faces, backend="torch", batch_size=8, config=AugmentConfig(image_size=16),
                          num_workers=0, seed=seed)
    return model, opt, loader


def ce_step(model, batch):
    loss = F.cross_entropy(model(batch["images"]), batch["labels"])  # dropout: the loop must restore torch's RNG
    return StepOutput(loss, {"loss": float(loss.detach())})


def lr_at(epoch: float) -> float:
    return cosine_with_warmup(epoch, 4, 1, 1e-3)


def run(faces, tmp_path, epochs, step_fn=ce_step, **kw):
    model, opt, loader = make(faces)
    ema = ModelEma(model, 0.9)
    cfg = FitConfig(epochs=epochs, lr_at=lr_at, output_dir=tmp_path, log_every=1, show_progress=False,
                    **kw.pop("cfg", {}))
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        hist = fit(step_fn, model, opt, loader, cfg, ema=ema, logger=logger, args={"seed": 0}, **kw)
    return model, ema, hist


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_killed_run_resumes_exactly(faces, tmp_path):
    full_model, full_ema, full = run(faces, tmp_path / "full", 4)
    run(faces, tmp_path / "killed", 2)  # "killed" after epoch 2: a fresh process resumes
    torch.manual_seed(1234)  # whatever the new process's RNG holds, the checkpoint's states win
    model, ema, rest = run(faces, tmp_path / "killed", 4)
    assert [r["epoch"] for r in rest] == [2.0, 3.0]
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[2:]]  # bit-identical losses
    assert torch.equal(params(model), params(full_model))
    assert torch.equal(params(ema.module), params(full_ema.module))
    assert (tmp_path / "killed" / "checkpoint-last.pth").is_file()
    assert len((tmp_path / "killed" / "log.jsonl").read_text().splitlines()) > 8


def test_non_finite_loss_stops_or_rolls_back(faces, tmp_path):
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        out = ce_step(model, batch)
        if calls["n"] == 14:  # once, in epoch 3 (6 batches per epoch)
            out.loss = out.loss * float("nan")
        return out

    with pytest.raises(NonFiniteLossError, match="non-finite"):
        run(faces, tmp_path / "stop", 3, step_fn=flaky)
    calls["n"] = 0
    clean_model, _, _ = run(faces, tmp_path / "clean", 3)
    model, _, hist = run(faces, tmp_path / "rollback", 3, step_fn=flaky, cfg={"nonfinite": "rollback"})
    assert [r["epoch"] for r in hist] == [0.0, 1.0, 2.0]
    assert torch.equal(params(model), params(clean_model))  # the transient NaN left no trace


def test_accumulation_steps_the_optimizer_less_often(faces, tmp_path):
    model, opt, loader = make(faces)
    steps = {"n": 0}
    orig = opt.step

    def counting_step(*a, **k):
        steps["n"] += 1
        return orig(*a, **k)

    opt.step = counting_step
    cfg = FitConfig(epochs=1, lr_at=lr_at, output_dir=tmp_path, accum_steps=4, show_progress=False, clip_grad=1.0)
    fit(ce_step, model, opt, loader, cfg)
    assert steps["n"] == 2  # 6 batches, accumulated by 4: steps after batch 4 and after the last


def test_bad_config_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        FitConfig(epochs=0, lr_at=lr_at, output_dir=tmp_path)
    with pytest.raises(ValueError, match="accum_steps"):
        FitConfig(epochs=1, lr_at=lr_at, output_dir=tmp_path, accum_steps=0)
