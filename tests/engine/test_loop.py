"""The epoch loop: exact resume (own checkpoint or an explicit one), the non-finite-loss guard, accumulation,
periodic and best checkpoints, periodic evaluation, fp16 with a GradScaler, torch.compile."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferfast.data import AugmentConfig, build_loader, open_dataset
from ferfast.engine.checkpoint import BEST_CHECKPOINT, list_checkpoints, load_checkpoint
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import MetricLogger, NonFiniteLossError
from ferfast.engine.loop import BEST_KEY, FitConfig, fit
from ferfast.engine.optim import cosine_with_warmup
from ferfast.engine.steps import StepOutput
from tests.utils import write_tiny_faces


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = write_tiny_faces(
        tmp_path_factory.mktemp("faces"), num_train=48, num_test=14, num_unlabeled=7, num_unlabeled_identities=1
    )
    return open_dataset("synthetic", out, "train")


def make(faces, seed=0, dropout=0.2):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 7))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = build_loader(
        "stage1", faces, backend="torch", batch_size=8, config=AugmentConfig(image_size=16), num_workers=0, seed=seed
    )
    return model, opt, loader


def ce_step(model, batch):
    loss = F.cross_entropy(model(batch["images"]), batch["labels"])  # dropout: the loop must restore torch's RNG
    return StepOutput(loss, {"loss": loss.detach()})  # a device tensor: fit reads it at log steps only


def lr_at(epoch: float) -> float:
    return cosine_with_warmup(epoch, 4, 1, 1e-3)


def run(faces, tmp_path, epochs, step_fn=ce_step, dropout=0.2, **kw):
    model, opt, loader = make(faces, dropout=dropout)
    ema = ModelEma(model, 0.9)
    cfg = FitConfig(
        epochs=epochs, lr_at=lr_at, output_dir=tmp_path, show_progress=False, **{"log_every": 1, **kw.pop("cfg", {})}
    )
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
    assert [r["epoch"] for r in rest] == [3.0, 4.0]  # 1-based, as on the screen
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
    with pytest.warns(
        UserWarning,
        match=r"step 13 \(first at step 13\): rolling back .*checkpoint-last\.pth "
        r"\(epoch 3, step 0\), rollback 1 of 3: learning rate x0\.5, skipping the "
        r"batch of step 13",
    ):
        _, _, hist = run(faces, tmp_path / "rollback", 3, step_fn=flaky, cfg={"nonfinite": "rollback"})
    assert [r["epoch"] for r in hist] == [1.0, 2.0, 3.0]
    assert hist[-1]["lr_scale"] == 0.5 and all(math.isfinite(r["loss"]) for r in hist)
    records = [json.loads(line) for line in (tmp_path / "rollback" / "log.jsonl").read_text().splitlines()]
    events = [r for r in records if r.get("event") == "rollback"]
    assert [(r["step"], r["skipped_step"], r["lr_scale"], r["epoch"]) for r in events] == [(13, 13, 0.5, 3)]
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == [s for s in range(18) if s != 13]  # each step once: the replay skipped step 13's batch


def test_the_non_finite_check_waits_for_a_log_step_but_names_the_first_bad_step(faces, tmp_path):
    """The loss is not read every step: a NaN at global step 13 (epoch 2's second) is seen at the next log step
    (log_every=4: epoch 2's fourth, step 15) or at the epoch's end, before its checkpoint, never later."""
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        out = ce_step(model, batch)
        if calls["n"] == 14:
            out.loss = out.loss * float("nan")
        return out

    with pytest.raises(NonFiniteLossError, match=r"epoch 3 up to step 15 \(first at step 13\)"):
        run(faces, tmp_path / "stop", 3, step_fn=flaky, cfg={"log_every": 4})
    saved = load_checkpoint(tmp_path / "stop" / "checkpoint-last.pth")
    assert saved["epoch"] == 1 and saved["epochs_done"] == 2  # the third epoch was never saved
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match=r"epoch 3 up to step 17 \(first at step 13\)"):
        run(faces, tmp_path / "end", 3, step_fn=flaky, cfg={"log_every": 0})  # only the epoch's end reads
    calls["n"] = 0
    with pytest.warns(UserWarning, match="rolling back"):
        model, _, hist = run(
            faces, tmp_path / "rollback", 3, step_fn=flaky, cfg={"nonfinite": "rollback", "log_every": 4}
        )
    assert [r["epoch"] for r in hist] == [1.0, 2.0, 3.0]
    assert all(torch.isfinite(params(model)))  # the NaN weights of steps 13-15 were discarded


def test_log_records_hold_the_means_since_the_previous_record(faces, tmp_path):
    values = iter(range(100))

    def counting(model, batch):
        out = ce_step(model, batch)
        return StepOutput(out.loss, {"k": float(next(values))})  # step i reports i (Python numbers work too)

    run(faces, tmp_path, 1, step_fn=counting, cfg={"log_every": 4})
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "time_s" not in r]
    assert [(r["step"], r["k"]) for r in steps] == [(3, 1.5)]  # mean of 0..3; steps 4-5 are in the epoch's mean
    assert [r["k"] for r in records if "time_s" in r] == [2.5]


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


def test_resume_from_an_explicit_checkpoint_unless_the_run_has_its_own(faces, tmp_path):
    full_model, _, full = run(faces, tmp_path / "full", 4)
    run(faces, tmp_path / "elsewhere", 2)
    source = tmp_path / "elsewhere" / "checkpoint-last.pth"
    model, _, rest = run(faces, tmp_path / "new", 4, resume_from=source)
    assert [r["epoch"] for r in rest] == [3.0, 4.0]
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[2:]]
    assert torch.equal(params(model), params(full_model))
    _, _, again = run(faces, tmp_path / "new", 4, resume_from=source)  # its own checkpoint-last.pth (4 epochs) wins
    assert again == []
    with pytest.raises(FileNotFoundError, match="resume_from"):
        run(faces, tmp_path / "other", 1, resume_from=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="checkpoint of 'train', not of 'stage1'"):
        run(faces, tmp_path / "other", 3, resume_from=source, stage="stage1")


def test_numbered_checkpoints_every_save_every_epochs_and_after_the_last(faces, tmp_path):
    run(faces, tmp_path / "all", 5, cfg={"save_every": 2, "keep": None})
    assert [e for e, _ in list_checkpoints(tmp_path / "all")] == [2, 4, 5]  # checkpoint-N.pth: after N epochs
    last = load_checkpoint(tmp_path / "all" / "checkpoint-last.pth")
    assert last["epoch"] == 4 and last["epochs_done"] == 5 and last["step"] == 0  # "epoch": MAE's 0-based index
    assert load_checkpoint(tmp_path / "all" / "checkpoint-2.pth")["epochs_done"] == 2
    run(faces, tmp_path / "kept", 5, cfg={"save_every": 1, "keep": 2})
    assert [e for e, _ in list_checkpoints(tmp_path / "kept")] == [4, 5]


def test_one_summary_line_every_print_every_epochs_and_after_the_last(faces, tmp_path, capsys):
    model, opt, loader = make(faces)
    for every, printed in ((2, [2, 4, 5]), (0, [])):
        cfg = FitConfig(epochs=5, lr_at=lr_at, output_dir=tmp_path / str(every), print_every=every)
        fit(ce_step, model, opt, loader, cfg, stage="stage1")
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stage1 epoch")]
        assert [int(ln.split()[2].split("/")[0]) for ln in lines] == printed  # 1-based, "stage1 epoch 2/5 | ..."
        assert all("/5 | loss " in ln for ln in lines)


def test_the_start_up_line_says_device_precision_and_compilation(faces, tmp_path, capsys):
    model, opt, loader = make(faces)
    cfg = FitConfig(
        epochs=2,
        lr_at=lr_at,
        output_dir=tmp_path,
        precision="bf16",
        precision_note="auto: amx_bf16, measured fp32 9 ms vs bf16 4 ms per step",
    )
    fit(ce_step, model, opt, loader, cfg, stage="stage1")
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "stage1: device cpu | precision bf16 (auto: amx_bf16, measured fp32 9 ms vs bf16 4 ms per step)"
        " | compile off | 2 epochs of 6 steps, from the start"
    )


def test_evaluation_every_eval_every_epochs_and_the_best_checkpoint_survive_a_resume(faces, tmp_path):
    val = {1: 0.5, 3: 0.7, 4: 0.6}
    calls = []

    def evaluate(epoch):
        calls.append(epoch)
        return {"val_accuracy": val[epoch], "val_macro_f1": val[epoch] / 2}

    class Killed(Exception):
        pass

    def kill_after_epoch_3(epoch, record):
        if epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        run(faces, tmp_path, 5, cfg={"eval_every": 2}, evaluate=evaluate, on_epoch_end=kill_after_epoch_3)
    assert calls == [1, 3]
    _, _, rest = run(faces, tmp_path, 5, cfg={"eval_every": 2}, evaluate=evaluate)
    assert calls == [1, 3, 4] and [r["epoch"] for r in rest] == [5.0]  # the last epoch is always evaluated
    assert rest[0]["val_accuracy"] == 0.6 and rest[0]["val_macro_f1"] == 0.3
    best = load_checkpoint(tmp_path / BEST_CHECKPOINT)
    assert best["epoch"] == 3 and best[BEST_KEY] == {"metric": "val_accuracy", "value": 0.7, "epoch": 3}
    epochs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if "time_s" in r]
    assert [(r["epoch"], r.get("val_accuracy")) for r in epochs] == [(1, None), (2, 0.5), (3, None), (4, 0.7), (5, 0.6)]
    with pytest.raises(ValueError, match="best_metric"):
        run(faces, tmp_path / "no_metric", 1, evaluate=lambda epoch: {"val_loss": 1.0})


def test_fp16_with_a_grad_scaler_resumes_exactly(faces, tmp_path):
    def scaler():  # a scale that overflows fp16 at first and grows every step: its state shapes the run
        return torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=1)

    fp16 = {"precision": "fp16"}
    full_model, _, full = run(faces, tmp_path / "full", 4, cfg=fp16, scaler=scaler())
    run(faces, tmp_path / "killed", 2, cfg=fp16, scaler=scaler())
    model, _, rest = run(faces, tmp_path / "killed", 4, cfg=fp16, scaler=scaler())
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[2:]]
    assert torch.equal(params(model), params(full_model))
    state = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["scaler"]
    assert state["scale"] != 2.0**20 and state["growth_interval"] == 1
    with pytest.raises(ValueError, match="GradScaler"):
        run(faces, tmp_path / "fp32", 1, scaler=scaler())


def test_compile_runs_the_step_on_the_compiled_model(faces, tmp_path):
    seen = []

    def step(model, batch):
        seen.append(type(model).__name__)
        return ce_step(model, batch)

    compiled = {"compile": True, "compile_backend": "aot_eager"}  # inductor's first compile takes ~30 s here
    model, _, hist = run(faces, tmp_path / "compiled", 1, step_fn=step, dropout=0.0, cfg=compiled)
    eager_model, _, eager = run(faces, tmp_path / "eager", 1, dropout=0.0)
    assert set(seen) == {"OptimizedModule"}
    assert hist[0]["loss"] == pytest.approx(eager[0]["loss"], rel=1e-5)
    torch.testing.assert_close(params(model), params(eager_model), rtol=1e-4, atol=1e-6)
    saved = load_checkpoint(tmp_path / "compiled" / "checkpoint-last.pth")
    assert list(saved["model"]) == list(eager_model.state_dict())  # no "_orig_mod." prefixes


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"accum_steps": 0}, "accum_steps"),
        ({"save_every": 0}, "save_every"),
        ({"eval_every": 0}, "eval_every"),
        ({"precision": "fp8"}, "precision"),
        ({"keep": -1}, "keep"),
        ({"print_every": -1}, "print_every"),
        ({"compile_mode": "fast"}, "compile_mode"),
        ({"nonfinite": "ignore"}, "nonfinite"),
        ({"log_every": -1}, "log_every"),
        ({"save_every_steps": -1}, "save_every_steps"),
        ({"max_rollbacks": -1}, "max_rollbacks"),
        ({"max_rollbacks": True}, "max_rollbacks"),
        ({"max_rollbacks": 2.5}, "max_rollbacks"),
    ],
)
def test_bad_config_values_are_named(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        FitConfig(**{"epochs": 1, "lr_at": lr_at, "output_dir": tmp_path, **kwargs})
