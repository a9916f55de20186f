"""Learning-rate schedules: MAE's warmup + half-cycle cosine, step decay, linear scaling, per-group lr_scale."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from ferfast.engine import cosine_with_warmup, scaled_lr, set_lr, step_decay


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


def test_scaled_lr():
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # MAE: blr 1.5e-4 at batch 4096
    assert scaled_lr(1e-3, 64) == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="eff_batch"):
        scaled_lr(1e-3, 0)


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
