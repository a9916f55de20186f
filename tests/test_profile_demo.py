"""``benchmarks/profile_demo.py``'s timers: exclusive time per (stage, part), with a clock the test drives."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_demo.py"


@pytest.fixture
def profile(monkeypatch):
    spec = importlib.util.spec_from_file_location("profile_demo", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    now = [0.0]
    monkeypatch.setattr(module.time, "perf_counter", lambda: now[0])
    return module, now


def test_nested_parts_charge_the_innermost_one(profile):
    module, now = profile
    timers = module.Timers()
    with timers.in_stage("stage1:mixup"):  # 'other' runs while no part does
        now[0] += 1.0
        with timers.part("loss+mixup"):
            now[0] += 2.0
            with timers.part("forward"):
                now[0] += 5.0
            now[0] += 0.5  # back in the step: the step's own time again
        with timers.part("backward"):
            now[0] += 7.0
        now[0] += 0.25
    parts = timers.seconds["stage1:mixup"]
    assert parts == {"other": 1.25, "loss+mixup": 2.5, "forward": 5.0, "backward": 7.0}
    assert timers.stage_total["stage1:mixup"] == sum(parts.values()) == 15.75
    assert timers.stage == "outside" and timers.last_stage == "stage1:mixup"


def test_wrapped_functions_are_timed_and_still_return(profile):
    module, now = profile
    timers = module.Timers()

    class Owner:
        @staticmethod
        def step(x):
            now[0] += 3.0
            return x + 1

    module._wrap(Owner, "step", timers, "optimizer")
    with timers.in_stage("pretrain:mae"):
        assert Owner.step(1) == 2
    assert timers.seconds["pretrain:mae"]["optimizer"] == 3.0
    lines = module.report(timers)
    assert lines[2].startswith("| pretrain:mae | 3.0 |") and "3.0 (100%)" in lines[2]
