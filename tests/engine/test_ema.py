"""ModelEma: the foreach-lerp update against a plain loop, non-float buffers, warm-up, wrappers and state dicts."""

import itertools

import pytest
import torch
from torch import nn

from ferfast.engine import ModelEma


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def sgd_step(model, opt):
    model.train()
    loss = model(torch.randn(8, 6)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def reference_update(ref: dict, model: nn.Module, decay: float) -> None:
    """The EMA rule written out: ema = decay * ema + (1 - decay) * p for floats, a copy for the rest."""
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            ref[name] = decay * ref[name] + (1 - decay) * value.detach()
        else:
            ref[name] = value.detach().clone()


@pytest.mark.parametrize("decay", [0.999, 0.9, 0.5])
def test_matches_plain_loop(decay):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEma(model, decay=decay)
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(6):
        sgd_step(model, opt)
        ema.update(model)
        reference_update(ref, model, decay)
    state = ema.state_dict()
    assert state.keys() == ref.keys()
    for name, value in ref.items():
        torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-7, msg=name)
    # the integer buffer (BatchNorm's num_batches_tracked) is copied, not averaged
    assert state["1.num_batches_tracked"].item() == 6
    # and the average really lags behind the model
    assert not torch.allclose(state["0.weight"], model.state_dict()["0.weight"])
    assert ema.num_updates == 6


def test_copy_is_detached_and_in_eval_mode():
    model = make_model()
    ema = ModelEma(model)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the model changes; the EMA copy only follows on update()
    assert torch.equal(ema.module[0].weight, before)
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, before + 0.001 * 1.0)


def test_decay_extremes():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen, follower = ModelEma(model, decay=1.0), ModelEma(model, decay=0.0)
    start = {k: v.clone() for k, v in frozen.state_dict().items()}
    sgd_step(model, opt)
    frozen.update(model)
    follower.update(model)
    for k, v in model.state_dict().items():
        assert torch.equal(follower.state_dict()[k], v), k
        if v.is_floating_point():
            assert torch.equal(frozen.state_dict()[k], start[k]), k


def test_warmup_follows_tf_rule():
    model = make_model()
    ema = ModelEma(model, decay=0.9, warmup=True)
    assert not ModelEma(model).warmup  # off by default
    seen = []
    for _ in range(200):
        seen.append(ema.get_decay())
        ema.update(model)
    assert seen[0] == pytest.approx(0.1) and seen[1] == pytest.approx(2 / 11)
    assert seen[-1] == 0.9 and seen[79] < 0.9  # capped at decay once (1 + n) / (10 + n) exceeds it
    assert all(a <= b for a, b in itertools.pairwise(seen))


def test_wrapped_model_and_prefixed_state_dict():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema_plain, ema_wrapped = ModelEma(model, decay=0.8), ModelEma(nn.DataParallel(model), decay=0.8)
    assert not isinstance(ema_wrapped.module, nn.DataParallel)
    sgd_step(model, opt)
    ema_plain.update(model)
    ema_wrapped.update(nn.DataParallel(model))
    for k, v in ema_plain.state_dict().items():
        assert torch.equal(ema_wrapped.state_dict()[k], v), k

    other = ModelEma(make_model())
    other.load_state_dict({f"module.{k}": v for k, v in ema_plain.state_dict().items()}, num_updates=5)
    assert other.num_updates == 5
    for k, v in ema_plain.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_bad_input():
    with pytest.raises(ValueError, match="decay"):
        ModelEma(make_model(), decay=1.5)
    with pytest.raises(TypeError, match="model"):
        ModelEma("resnet")
    ema = ModelEma(make_model())
    with pytest.raises(ValueError, match="parameters and buffers"):
        ema.update(nn.Linear(6, 3))
