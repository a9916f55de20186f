"""``run.precision="auto"``: bf16 on a GPU that has it; on the CPU only with native bf16 units and a measured gain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferfast.engine import precision as prec
from ferfast.engine.precision import MIN_SPEEDUP, choose_precision, cpu_bf16_units, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def probe_of(model: nn.Module):
    return lambda: model(torch.randn(4, 8)).sum()


def test_explicit_precisions_pass_through():
    for value in ("bf16", "fp16", "fp32"):
        assert choose_precision(value, CPU) == (value, "")
        assert resolve_precision(value, CUDA) == value


def test_cuda_auto_is_bf16_where_the_gpu_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", CUDA)[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_precision("auto", CUDA) == ("fp32", "auto: this GPU has no bf16")


def test_cpu_auto_without_bf16_units_is_fp32_and_measures_nothing(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: None)
    called = []
    precision, why = choose_precision("auto", CPU, lambda: called.append(1) or torch.zeros((), requires_grad=True))
    assert precision == "fp32" and "no native bf16" in why and not called


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "expected"),
    [(1.0, 0.5, "bf16"), (1.0, 1.0 / MIN_SPEEDUP, "bf16"), (1.0, 0.95, "fp32"), (1.0, 2.0, "fp32")],
)
def test_cpu_auto_with_bf16_units_follows_the_measurement(monkeypatch, fp32_s, bf16_s, expected):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: "amx_bf16")
    monkeypatch.setattr(prec, "measure_bf16_speedup", lambda step, device: (fp32_s, bf16_s))
    model = nn.Linear(8, 2)
    precision, why = choose_precision("auto", CPU, probe_of(model))
    assert precision == expected and "amx_bf16" in why and "ms" in why
    assert choose_precision("auto", CPU)[0] == "fp32"  # nothing to measure


def test_the_measurement_leaves_the_random_streams_and_the_gradients(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: "avx512_bf16")
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 2))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    precision, why = choose_precision("auto", CPU, probe_of(model), zero_grad=lambda: model.zero_grad(set_to_none=True))
    assert torch.equal(torch.rand(3), expected)  # the run's draws are those it would have made
    assert all(p.grad is None for p in model.parameters())
    assert precision in ("bf16", "fp32") and "measured fp32" in why


def test_cpu_bf16_units_reads_the_cpu_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    for flags, expected in (
        ("fpu avx2 avx512f", None),
        ("avx512f avx512_bf16", "avx512_bf16"),
        ("avx512_bf16 amx_tile amx_bf16", "amx_bf16"),
    ):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        monkeypatch.setattr(prec, "_CPUINFO", info)
        monkeypatch.setattr(prec._cpuinfo_flags, "__defaults__", (info,))
        assert cpu_bf16_units() == expected
    monkeypatch.setattr(prec._cpuinfo_flags, "__defaults__", (tmp_path / "missing",))  # not Linux: torch's probes
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert cpu_bf16_units() == "avx512_bf16"


def test_the_measurement_fits_its_budget(monkeypatch):
    clock = {"t": 0.0}
    cost = {"fp32": 2.0, "bf16": 1.0}  # seconds per step, on a fake clock
    monkeypatch.setattr(prec.time, "perf_counter", lambda: clock["t"])
    calls = []

    def step():
        precision = "bf16" if torch.is_autocast_enabled("cpu") else "fp32"
        calls.append(precision)
        clock["t"] += cost[precision]
        return torch.zeros((), requires_grad=True)

    assert prec.measure_bf16_speedup(step, CPU, repeats=3, budget_s=5.0) == (2.0, 1.0)
    assert calls == ["fp32", "bf16"]  # the warm-ups took 3 s: one more pair would not fit in 5 s
    calls.clear()
    cost.update(fp32=0.2, bf16=0.1)
    prec.measure_bf16_speedup(step, CPU, repeats=3, budget_s=5.0)
    assert calls == ["fp32", "bf16"] + ["fp32"] * 3 + ["bf16"] * 3
