"""``run.precision="auto"``: which autocast a run uses, and why.

- On CUDA: bf16 when the GPU supports it (``torch.cuda.is_bf16_supported()``: Ampere and newer), else fp32 (fp16
  needs a GradScaler and is opt-in: ``run.precision=fp16``).
- On the CPU: bf16 only when the processor has native bf16 matrix units (AMX-BF16, or AVX512-BF16's dot products)
  **and** a short one-off measurement of the run's own model (forward + backward on a small random batch, a warm-up
  and a few repeats each way, within :data:`MEASURE_BUDGET_S`) finds bf16 faster by at least :data:`MIN_SPEEDUP`;
  otherwise fp32. Without such units bf16 is emulated and slower, and for small models the casts can cost more than
  the matrix products save, which the measurement catches. A timing can differ between runs: set ``fp32`` or
  ``bf16`` explicitly where runs must be reproducible (the demo does on the CPU).

The measurement draws its own random input and runs under ``torch.random.fork_rng``, so it leaves the run's random
streams (dropout, MAE's masking) and the model's gradients as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "MEASURE_BUDGET_S",
    "MIN_SPEEDUP",
    "choose_precision",
    "cpu_bf16_units",
    "measure_bf16_speedup",
    "resolve_precision",
]

#: bf16 must be at least this much faster than fp32 (time ratio) for "auto" to pick it on the CPU
MIN_SPEEDUP = 1.1
#: seconds the CPU measurement may take beyond its two warm-up steps
MEASURE_BUDGET_S = 5.0
_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_flags(path: Path = _CPUINFO) -> set[str]:
    """The first processor's flags in ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_units() -> str | None:
    """This CPU's native bf16 matrix units: ``"amx_bf16"``, ``"avx512_bf16"``, or None.

    From ``/proc/cpuinfo``'s flags where there is one (Linux), else from torch's own probes
    (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``).
    """
    flags = _cpuinfo_flags()
    if flags:
        if "amx_bf16" in flags:
            return "amx_bf16"
        return "avx512_bf16" if "avx512_bf16" in flags else None
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return name
    return None


def measure_bf16_speedup(
    step: Callable[[], Tensor], device: torch.device, repeats: int = 3, budget_s: float = MEASURE_BUDGET_S
) -> tuple[float, float]:
    """Seconds of one ``step()`` (a forward pass returning a loss; backward is run here) in fp32 and in bf16
    autocast: the best of up to ``repeats`` after one warm-up each, fewer when the warm-ups show that ``repeats``
    would not fit in ``budget_s`` (a slow step is then timed by its warm-up alone, whose first-call costs are
    small beside it). The random streams are restored afterwards."""
    devices = [device] if device.type == "cuda" else []

    def once(precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = step()
        loss.float().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.random.fork_rng(devices=devices):
        warm = {p: once(p) for p in ("fp32", "bf16")}
        spent = sum(warm.values())
        n = min(repeats, int(max(budget_s - spent, 0.0) / spent)) if spent > 0 else repeats
        if n == 0:
            return warm["fp32"], warm["bf16"]
        best = {p: min(once(p) for _ in range(n)) for p in ("fp32", "bf16")}
    return best["fp32"], best["bf16"]


def choose_precision(
    precision: str,
    device: torch.device,
    probe: Callable[[], Tensor] | None = None,
    *,
    zero_grad: Callable[[], None] | None = None,
) -> tuple[str, str]:
    """``(precision, why)``: ``precision`` itself unless it is ``"auto"``, which is resolved as the module says.

    ``probe()`` runs the run's model forward on a small random batch and returns a loss (the CPU measurement; without
    it "auto" stays fp32 on the CPU); ``zero_grad()`` clears the gradients the measurement left.
    """
    if precision != "auto":
        return precision, ""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU supports bf16"
        return "fp32", "auto: this GPU has no bf16"
    if device.type != "cpu":
        return "fp32", f"auto: fp32 on {device.type}"
    units = cpu_bf16_units()
    if units is None:
        return "fp32", "auto: this CPU has no native bf16 matrix units (AMX-BF16, AVX512-BF16)"
    if probe is None:
        return "fp32", f"auto: {units}, no model to measure"
    try:
        fp32, bf16 = measure_bf16_speedup(probe, device)
    finally:
        if zero_grad is not None:
            zero_grad()
    speed = f"{units}, measured fp32 {fp32 * 1e3:.0f} ms vs bf16 {bf16 * 1e3:.0f} ms per step"
    if bf16 * MIN_SPEEDUP <= fp32:
        return "bf16", f"auto: {speed}"
    return "fp32", f"auto: {speed}"


def resolve_precision(precision: str, device: torch.device, probe: Callable[[], Tensor] | None = None) -> str:
    """:func:`choose_precision`'s precision (``auto`` resolved; without ``probe`` the CPU stays on fp32)."""
    return choose_precision(precision, device, probe)[0]
