"""The optimizer and its learning rate: MAE's warmup + half-cycle cosine, step decay, linear scaling, per-group
lr_scale, AdamW's parameter groups (layer decay included) and the effective batch of MAE's rule."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from ferfast.config import OptimConfig, TrainConfig, build_config
from ferfast.engine import cosine_with_warmup, step_decay
from ferfast.engine import optim as optim_module
from ferfast.engine.optim import effective_batch_size, lr_function, make_optimizer, set_lr
from ferfast.engine.precision import resolve_precision
from ferfast.models import create_model


def mae_adjust_learning_rate(epoch, args):
    """MAE's util/lr_sched.py, transcribed (epoch is fractional: epoch + it / iters_per_epoch)."""
    if epoch < args.warmup_epochs:
        return args.lr * epoch / args.warmup_epochs
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs))
    )


def test_cosine_with_warmup_values():
    base, lo = 1.5e-4, 1e-6
    assert cosine_with_warmup(0, 100, 10, base) == 0.0
    assert cosine_with_warmup(5, 100, 10, base) == pytest.approx(base / 2)
    assert cosine_with_warmup(10, 100, 10, base, lo) == pytest.approx(base)
    assert cosine_with_warmup(55, 100, 10, base, lo) == pytest.approx((base + lo) / 2)  # half-way down the cosine
    assert cosine_with_warmup(100, 100, 10, base, lo) == pytest.approx(lo)
    assert cosine_with_warmup(150, 100, 10, base, lo) == pytest.approx(lo)  # held at min_lr past the end
    assert cosine_with_warmup(0, 100, 0, base) == pytest.approx(base)  # no warmup: starts at base_lr
    assert cosine_with_warmup(7, 7, 7, base) == 0.0  # warmup over the whole run, then the end


def test_matches_mae_per_iteration():
    args = SimpleNamespace(lr=3.4e-4, min_lr=0.0, warmup_epochs=5, epochs=20)
    iters = 7  # per epoch
    for it in range(args.epochs * iters):
        expected = mae_adjust_learning_rate(it / iters, args)
        assert cosine_with_warmup(it, args.epochs * iters, args.warmup_epochs * iters, args.lr) == pytest.approx(
            expected, rel=1e-12, abs=1e-18
        )
        # the same thing with epochs as the unit, as MAE calls it
        assert cosine_with_warmup(it / iters, args.epochs, args.warmup_epochs, args.lr) == pytest.approx(expected)


def test_cosine_decreases_after_warmup():
    lrs = [cosine_with_warmup(s, 50, 5, 1.0) for s in range(51)]
    assert lrs[:6] == pytest.approx([s / 5 for s in range(6)])
    assert all(a >= b for a, b in itertools.pairwise(lrs[5:]))


def test_step_decay():
    assert [step_decay(e) for e in (0, 19, 19.99, 20, 39, 40, 49)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert step_decay(25, base_lr=1.5e-4) == pytest.approx(1.5e-5)
    assert step_decay(10, milestones=(5, 8, 12), gamma=0.5) == pytest.approx(0.25)
    assert step_decay(3, milestones=()) == 1.0
    with pytest.raises(ValueError, match="milestones"):
        step_decay(3, milestones=(40, 20))


def test_effective_lr_scales_blr():
    """MAE's linear scaling rule, ``lr = blr * eff_batch / 256``; an explicit ``lr`` wins."""
    assert OptimConfig(blr=1.5e-4).effective_lr(256) == pytest.approx(1.5e-4)
    assert OptimConfig(blr=1.5e-4).effective_lr(4096) == pytest.approx(2.4e-3)  # MAE: blr 1.5e-4 at batch 4096
    assert OptimConfig(blr=1e-3).effective_lr(64) == pytest.approx(2.5e-4)
    assert OptimConfig(blr=1e-3, lr=3e-4).effective_lr(64) == 3e-4
    with pytest.raises(ValueError, match="effective_batch_size"):
        OptimConfig(blr=1e-3).effective_lr(0)


def test_set_lr_respects_lr_scale():
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.5}, {"params": [c], "lr_scale": 0.1}])
    assert set_lr(opt, 2e-3) == 2e-3
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 1e-3, 2e-4])
    set_lr(opt, 0.0)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="optimizer"):
        set_lr([1, 2], 0.1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"step": -1}, "step"),
        ({"total_steps": 0}, "total_steps"),
        ({"warmup_steps": 200}, "warmup_steps"),
        ({"base_lr": float("nan")}, "base_lr"),
        ({"min_lr": "0"}, "min_lr"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    args = {"step": 0, "total_steps": 100, "warmup_steps": 10, "base_lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=name):
        cosine_with_warmup(**args)


def test_optimizer_groups_and_schedules():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = build_config(TrainConfig)
    opt, lr = make_optimizer(model, cfg.stage1.optim, 32)
    assert lr == pytest.approx(1.5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1  # only the Linear weight decays
    lr1 = lr_function(cfg.stage1.optim, 100, 1.5e-4)
    assert lr1(0.0) == 0.0 and lr1(5.0) == pytest.approx(1.5e-4) and lr1(100.0) == pytest.approx(1e-6)
    lr2 = lr_function(cfg.stage2.optim, 50, 1.5e-4)
    assert [lr2(e) for e in (0, 19.9, 20, 40)] == pytest.approx([1.5e-4, 1.5e-4, 1.5e-5, 1.5e-6])
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"  # autocast + GradScaler, on the CPU too
    # "auto": tests/engine/test_precision.py


def test_layer_decay_groups_are_maes_param_groups_lrd():
    model = create_model("vit_demo", img_size=32, num_classes=7)  # 4 blocks: 5 "layers" + the head's
    opt, _ = make_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.05, layer_decay=0.5), 32)
    group = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)

    def scale_and_decay(name):
        g = group[id(named[name])]
        return g["lr_scale"], g["weight_decay"]

    assert scale_and_decay("cls_token") == scale_and_decay("pos_embed") == (0.5**5, 0.0)  # no_weight_decay()
    assert scale_and_decay("patch_embed.proj.weight") == (0.5**5, 0.05)
    assert scale_and_decay("blocks.0.attn.qkv.weight") == (0.5**4, 0.05)
    assert scale_and_decay("blocks.0.norm1.weight") == (0.5**4, 0.0)  # 1-d: no weight decay
    assert scale_and_decay("blocks.3.mlp.fc2.weight") == (0.5, 0.05)
    assert scale_and_decay("head.weight") == (1.0, 0.05) and scale_and_decay("fc_norm.bias") == (1.0, 0.0)
    set_lr(opt, 2e-3)  # what the schedule does every iteration
    assert group[id(named["blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(2e-3 * 0.5**4)
    with pytest.raises(ValueError, match="layer_decay"):
        make_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr=1e-3, layer_decay=0.5), 32)


def test_maes_lr_rule_counts_every_process(monkeypatch):
    optim = OptimConfig(blr=1e-3, accum_steps=2)
    assert effective_batch_size(32, optim) == 64
    monkeypatch.setattr(optim_module, "get_world_size", lambda: 4)
    assert effective_batch_size(32, optim) == 256  # 32 per process x 4 processes x 2 accumulation steps
    _, lr = make_optimizer(torch.nn.Linear(2, 2), optim, effective_batch_size(32, optim))
    assert lr == pytest.approx(1e-3)
