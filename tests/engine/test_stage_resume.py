"""Stage 1 with face-IoU Mixup killed in the middle of an epoch resumes to the weights of an uninterrupted run:
the loader, the schedule, the random states and Mixup's own draws (a function of seed, epoch and step) all
continue at the step of the mid-epoch checkpoint."""

from __future__ import annotations

import pytest
import torch

from ferfast.engine import stages
from ferfast.engine.checkpoint import load_checkpoint
from ferfast.engine.stage_data import prepare_data
from ferfast.engine.stages import run_stage1
from tests.engine.test_stages import synth, tiny_config  # noqa: F401  (synth: a module-scoped fixture)


class Killed(Exception):
    """A kill -9 stand-in, raised from a training step after a mid-epoch checkpoint."""


def test_stage1_with_mixup_resumes_mid_epoch_exactly(synth, tmp_path, monkeypatch):  # noqa: F811
    # 28 labeled images / batch 4 = 7 steps an epoch; a checkpoint every 3 steps; killed at epoch 2's 7th step
    extra = {"stage1.batch_size": 4, "run.save_every_steps": 3, "stage1.mixup": True}
    full = tiny_config(synth, tmp_path / "full", **extra)
    run_stage1(full, prepare_data(full))
    killed = tiny_config(synth, tmp_path / "killed", **extra)
    calls = {"n": 0}
    real_step = stages.stage1_step

    def dying_step(*args, **kwargs):
        if calls["n"] == 7 + 6:  # the 14th step: the checkpoint after 12 steps is the last one
            raise Killed
        calls["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(stages, "stage1_step", dying_step)
    with pytest.raises(Killed):
        run_stage1(killed, prepare_data(killed))
    saved = load_checkpoint(tmp_path / "killed" / "stage1" / "checkpoint-last.pth")
    assert (saved["epochs_done"], saved["step"]) == (1, 5)  # mid-epoch: the resume starts at epoch 2, step 5
    monkeypatch.setattr(stages, "stage1_step", real_step)
    run_stage1(killed, prepare_data(killed))
    a = load_checkpoint(tmp_path / "full" / "stage1" / "checkpoint-last.pth")
    b = load_checkpoint(tmp_path / "killed" / "stage1" / "checkpoint-last.pth")
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=0, msg=key)
    for key in a["ema"]:
        torch.testing.assert_close(b["ema"][key], a["ema"][key], rtol=0, atol=0, msg=key)
