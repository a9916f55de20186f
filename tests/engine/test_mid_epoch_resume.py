"""Checkpoints inside an epoch (``save_every_steps``): a run killed in the middle of an epoch resumes there, with
the loader restarted at the step, the schedule, the random states and the epoch's running sums continued, so that
its weights equal an uninterrupted run's; the lines fit prints at start-up say where it continues from."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferfast.engine import loop as loop_module
from ferfast.engine import resume as resume_module
from ferfast.engine.checkpoint import list_checkpoints, load_checkpoint
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.steps import StepOutput
from tests.engine.test_loop import faces, lr_at, make, params, run  # noqa: F401  (faces: a module-scoped fixture)


class Killed(Exception):
    """A kill -9 stand-in: raised from a step, after the checkpoint the resume starts from."""


def killing_at(global_step):
    calls = {"n": 0}

    def step(model, batch):
        if calls["n"] == global_step:
            raise Killed
        calls["n"] += 1
        loss = F.cross_entropy(model(batch["images"]), batch["labels"])
        return StepOutput(loss, {"loss": loss.detach()})

    return step


def log_records(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def assert_each_step_once(folder, total_steps, epochs):
    records = log_records(folder)
    assert [r["step"] for r in records] == list(range(total_steps))  # strictly increasing, unique, complete
    assert [r["epoch"] for r in records if "time_s" in r] == list(range(1, epochs + 1))


@pytest.mark.parametrize(("accum", "every", "saved_at"), [(1, 4, 4), (2, 3, 4)])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(faces, tmp_path, accum, every, saved_at):  # noqa: F811
    """6 steps per epoch; checkpoints every ``every`` steps at an optimizer step (accum_steps=2 and every=3: the
    multiple 15 is reached between two micro-batches, so the checkpoint waits for step 16)."""
    cfg = {"save_every_steps": every, "accum_steps": accum, "keep": None}
    full_model, full_ema, full = run(faces, tmp_path / "full", 4, cfg=cfg)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        run(faces, killed, 4, step_fn=killing_at(17), cfg=cfg)  # killed at epoch 3's last step
    saved = load_checkpoint(killed / "checkpoint-last.pth")
    assert (saved["epochs_done"], saved["step"], saved["epoch"]) == (2, saved_at, 1)
    assert saved["step"] % accum == 0 and saved["epoch_stats"]["steps"] == saved_at
    assert [e for e, _ in list_checkpoints(killed)] == [1, 2]  # numbered files only at epochs' ends
    torch.manual_seed(1234)  # whatever the new process's RNG holds, the checkpoint's states win
    model, ema, rest = run(faces, killed, 4, cfg=cfg)
    assert [r["epoch"] for r in rest] == [3.0, 4.0]
    assert torch.equal(params(model), params(full_model))  # bitwise
    assert torch.equal(params(ema.module), params(full_ema.module))
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[2:]]  # the epoch's mean covers all of it
    assert [r["lr"] for r in rest] == [r["lr"] for r in full[2:]]
    assert_each_step_once(killed, 24, 4)
    full_steps = [(r["step"], r["loss"]) for r in log_records(tmp_path / "full") if "time_s" not in r]
    assert [(r["step"], r["loss"]) for r in log_records(killed) if "time_s" not in r] == full_steps


def test_mid_epoch_checkpoints_are_off_by_default_and_never_at_an_epochs_end(faces, tmp_path):  # noqa: F811
    saves = []
    real = resume_module.save_epoch_checkpoint

    def spy(output_dir, **kw):
        saves.append((kw["epoch"], kw["step"], kw["numbered"]))
        return real(output_dir, **kw)

    resume_module.save_epoch_checkpoint = spy
    try:
        run(faces, tmp_path / "off", 2)
        assert saves == [(0, 0, True), (1, 0, True)]
        saves.clear()
        run(faces, tmp_path / "on", 2, cfg={"save_every_steps": 2})
        assert saves == [(-1, 2, False), (-1, 4, False), (0, 0, True), (0, 2, False), (0, 4, False), (1, 0, True)]
    finally:
        resume_module.save_epoch_checkpoint = real


def test_a_checkpoint_of_an_older_version_still_resumes(faces, tmp_path):  # noqa: F811
    """Before ``epochs_done``, a checkpoint held only MAE's ``epoch`` (the last finished one, 0-based)."""
    full_model, _, full = run(faces, tmp_path / "full", 4)
    folder = tmp_path / "old"
    run(faces, folder, 2)
    ckpt = load_checkpoint(folder / "checkpoint-last.pth")
    for key in ("epochs_done", "epochs", "steps_per_epoch", "lr_scale", "skipped_steps"):
        del ckpt[key]
    (folder / "checkpoint-last.pth").unlink()
    torch.save(ckpt, folder / "checkpoint-last.pth")
    model, _, rest = run(faces, folder, 4)
    assert [r["epoch"] for r in rest] == [3.0, 4.0]
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[2:]]
    assert torch.equal(params(model), params(full_model))


def test_a_mid_epoch_checkpoint_of_another_epoch_length_is_refused(faces, tmp_path):  # noqa: F811
    folder = tmp_path / "run"
    with pytest.raises(Killed):
        run(faces, folder, 2, step_fn=killing_at(5), cfg={"save_every_steps": 2})
    path = folder / "checkpoint-last.pth"
    ckpt = load_checkpoint(path)
    ckpt["steps_per_epoch"] = 12
    path.unlink()
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"middle of an epoch of 12 steps \(at step 4\).* now has 6 steps"):
        run(faces, folder, 2, cfg={"save_every_steps": 2})


# ------------------------------------------------------------------------------------------ resume lines


def fit_quietly_or_not(faces, folder, epochs, step_fn=None, **cfg):  # noqa: F811
    """fit with the default progress (None: lines and summaries on the screen)."""
    model, opt, loader = make(faces)
    config = FitConfig(epochs=epochs, lr_at=lr_at, output_dir=folder, **cfg)
    steps = step_fn or killing_at(10**9)
    return fit(steps, model, opt, loader, config)


def test_the_resume_lines(faces, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "run"
    with pytest.raises(Killed):
        fit_quietly_or_not(faces, folder, 3, step_fn=killing_at(17), save_every_steps=4)  # saved at 16 = 2 * 6 + 4
    capsys.readouterr()
    path = folder / "checkpoint-last.pth"
    fit_quietly_or_not(faces, folder, 3, save_every_steps=4)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"train: resuming from {path} (epoch 3, step 4 of 6)"
    assert out[1].endswith("3 epochs of 6 steps, resuming at epoch 3 step 4")
    assert fit_quietly_or_not(faces, folder, 3) == []
    assert capsys.readouterr().out.splitlines() == [
        f"train: already finished ({path}: 3 of 3 epochs): nothing to train"
    ]
    hist = fit_quietly_or_not(faces, folder, 4)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"train: continuing {path} from epoch 3 to 4"
    assert [r["epoch"] for r in hist] == [4.0]
    fit_quietly_or_not(faces, folder, 4, show_progress=False)
    assert capsys.readouterr().out == ""


class ManyBatches:
    """A loader of 60 tiny float batches (already normalised) that honours ``start_step``."""

    def __init__(self, n=60):
        g = torch.Generator().manual_seed(0)
        self.batches = [
            {"images": torch.randn(2, 3, 4, 4, generator=g), "labels": torch.tensor([0, 1])} for _ in range(n)
        ]
        self.start = 0

    def set_epoch(self, epoch, start_step=0):
        self.start = start_step

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches[self.start :])


def test_progress_lines_without_a_terminal_on_long_epochs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop_module, "_PROGRESS_LINE_EVERY_S", 0.0)  # a line at every log step
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = FitConfig(epochs=1, lr_at=lambda e: 0.1, output_dir=tmp_path, log_every=20)
    fit(killing_at(10**9), model, opt, ManyBatches(), cfg, stage="stage1")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " step " in ln]
    assert [ln.split(" | ")[0] for ln in lines] == ["stage1 epoch 1/1 step 20/60", "stage1 epoch 1/1 step 40/60"]
    assert all(" | loss " in ln and " | lr 1.000e-01 | eta " in ln for ln in lines)
    monkeypatch.setattr(loop_module, "_PROGRESS_LINE_EVERY_S", 3600.0)  # at most every so often
    fit(
        killing_at(10**9),
        model,
        opt,
        ManyBatches(),
        FitConfig(epochs=1, lr_at=lambda e: 0.1, output_dir=tmp_path / "b", log_every=20),
    )
    assert " step " not in capsys.readouterr().out
    monkeypatch.setattr(loop_module, "_PROGRESS_LINE_EVERY_S", 0.0)
    fit(
        killing_at(10**9),
        model,
        opt,
        ManyBatches(49),
        FitConfig(epochs=1, lr_at=lambda e: 0.1, output_dir=tmp_path / "c", log_every=7),
    )
    assert " step " not in capsys.readouterr().out  # a short epoch: its summary line is enough


def test_the_finished_line_when_fewer_epochs_are_asked(tmp_path):
    resumed = resume_module.Resumed(
        path=tmp_path / "checkpoint-last.pth",
        epochs_done=5,
        step=0,
        best=None,
        lr_scale=1.0,
        skipped=set(),
        epoch_stats=None,
        planned_epochs=5,
        steps_per_epoch=6,
        rng=None,
    )
    assert loop_module.resume_line(resumed, 3, 6) == (
        f"already finished ({tmp_path}/checkpoint-last.pth: 5 epochs, more than the 3 asked): nothing to train"
    )


def test_run_save_every_steps_is_a_validated_setting_that_reaches_fit(tmp_path):
    from ferfast.config import ConfigError, TrainConfig, build_config
    from ferfast.engine.stages import _fit_config

    assert build_config(TrainConfig).run.save_every_steps == 0  # off by default
    cfg = build_config(TrainConfig, overrides={"run.save_every_steps": 500, "run.precision": "fp32"})
    fit_cfg = _fit_config(cfg, cfg.stage1.optim, 2, 1e-3, tmp_path, torch.device("cpu"), nn.Linear(2, 2))
    assert fit_cfg.save_every_steps == 500
    with pytest.raises(ConfigError, match=">= 0") as info:
        build_config(TrainConfig, overrides={"run.save_every_steps": -1})
    assert info.value.key == "run.save_every_steps"
