"""The rollback policy changes something each time: it reloads the last checkpoint with the learning rate halved
(a per-run factor on top of ``lr_at``, kept in the checkpoints and the log) and skips the batch of the first
non-finite step; after ``max_rollbacks`` it gives up naming what it tried, and without a checkpoint it says so."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ferfast.engine.checkpoint import load_checkpoint
from ferfast.engine.logging import MetricLogger, NonFiniteLossError
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.steps import StepOutput
from tests.engine.test_loop import faces, make, params  # noqa: F401  (faces: a module-scoped fixture)


def ce(model, batch, nan=False):
    loss = F.cross_entropy(model(batch["images"]), batch["labels"])
    if nan:
        loss = loss * float("nan")
    return StepOutput(loss, {"loss": loss.detach()})


def rollback_run(faces, folder, step_fn, epochs=3, lr_at=lambda e: 1e-3, model_opt_loader=None, **cfg):  # noqa: F811
    model, opt, loader = model_opt_loader or make(faces)
    config = FitConfig(
        epochs=epochs,
        lr_at=lr_at,
        output_dir=folder,
        show_progress=False,
        **{"nonfinite": "rollback", "log_every": 1, **cfg},
    )
    with MetricLogger(folder, tensorboard=False) as logger:
        hist = fit(lambda m, b: step_fn(m, b, opt), model, opt, loader, config, logger=logger)
    return model, hist


def records(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("save_every_steps", [0, 4])
def test_a_data_dependent_nan_is_skipped_and_the_run_finishes(faces, tmp_path, save_every_steps):  # noqa: F811
    """The NaN comes with one batch (global step 8: the second epoch's third); the replay skips it."""
    _, _, loader = make(faces)
    loader.set_epoch(1)
    bad = list(loader)[2]["index"]

    def step(model, batch, opt):
        return ce(model, batch, nan=torch.equal(batch["index"], bad))

    back_to = "epoch 2, step 0" if not save_every_steps else "epoch 2, step 2"  # step 8 = 6 + 2 (saved at 4, 8)
    with pytest.warns(
        UserWarning,
        match=rf"first at step 8\): rolling back to .*checkpoint-last\.pth \({back_to}\), "
        r"rollback 1 of 3: learning rate x0\.5, skipping the batch of step 8",
    ):
        model, hist = rollback_run(faces, tmp_path, step, save_every_steps=save_every_steps)
    assert [r["epoch"] for r in hist] == [1.0, 2.0, 3.0] and all(math.isfinite(r["loss"]) for r in hist)
    assert [r.get("lr_scale") for r in hist] == [None, 0.5, 0.5]
    assert all(torch.isfinite(params(model)))
    logged = records(tmp_path)
    events = [r for r in logged if r.get("event") == "rollback"]
    assert [(r["step"], r["skipped_step"], r["lr_scale"], r["rollback"]) for r in events] == [(8, 8, 0.5, 1)]
    steps = [r["step"] for r in logged if "event" not in r]
    assert steps == [s for s in range(18) if s != 8]  # each step once, the skipped one not trained on
    assert [r["lr"] for r in logged if r.get("step") == 9 and "event" not in r] == [5e-4]
    last = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert last["lr_scale"] == 0.5 and last["skipped_steps"] == [8]


def test_a_nan_above_a_learning_rate_is_cured_by_lowering_it(faces, tmp_path):  # noqa: F811
    def step(model, batch, opt):
        return ce(model, batch, nan=opt.param_groups[0]["lr"] > 6e-4)

    def lr_at(epoch):  # 1e-4 in the first epoch, then 1e-3: NaN from step 6 until the rate is halved
        return 1e-4 if epoch < 1 else 1e-3

    with pytest.warns(UserWarning, match=r"learning rate x0\.5, skipping the batch of step 6"):
        _, hist = rollback_run(faces, tmp_path, step, lr_at=lr_at)
    assert [(r["epoch"], r["lr"]) for r in hist] == [(1.0, 1e-4), (2.0, 5e-4), (3.0, 5e-4)]
    assert hist[-1]["lr_scale"] == 0.5
    # a resume keeps the lowered rate: the checkpoint carries it
    _, more = rollback_run(faces, tmp_path, step, epochs=4, lr_at=lr_at)
    assert [(r["epoch"], r["lr"], r["lr_scale"]) for r in more] == [(4.0, 5e-4, 0.5)]


def test_an_always_nan_loss_gives_up_naming_what_was_tried(faces, tmp_path):  # noqa: F811
    def step(model, batch, opt):
        return ce(model, batch, nan=opt.param_groups[0]["lr"] > 6e-4)

    def lr_at(epoch):  # the second epoch's rate stays above 6e-4 after two halvings
        return 1e-4 if epoch < 1 else 1e-2

    with pytest.warns(UserWarning, match="rolling back"), pytest.raises(NonFiniteLossError) as err:
        rollback_run(faces, tmp_path, step, lr_at=lr_at, max_rollbacks=2)
    text = str(err.value)
    assert "non-finite loss(es) in epoch 2 up to step 8 (first at step 8)" in text
    assert (
        "gave up after 2 rollbacks to the last checkpoint, which tried (1: learning rate x0.5, skipping the "
        "batch of step 6; 2: learning rate x0.25, skipping the batch of step 7)"
    ) in text
    assert load_checkpoint(tmp_path / "checkpoint-last.pth")["epochs_done"] == 1


def test_no_checkpoint_to_roll_back_to_is_a_clear_error(faces, tmp_path):  # noqa: F811
    with pytest.raises(
        NonFiniteLossError,
        match=r"in epoch 1 up to step 0 \(first at step 0\); no checkpoint to roll "
        r"back to in .* \(the first is written at the end of epoch 1\)",
    ):
        rollback_run(faces, tmp_path, lambda m, b, opt: ce(m, b, nan=True))
    with pytest.raises(NonFiniteLossError, match=r"the first is written after 4 steps or at the end of epoch 1"):
        rollback_run(faces, tmp_path / "steps", lambda m, b, opt: ce(m, b, nan=True), save_every_steps=4)
