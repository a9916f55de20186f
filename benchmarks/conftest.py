"""Shared machinery of ferfast's benchmarks (``pytest benchmarks/``; see STYLE.md §8 and Liger's ``benchmark/``).

Every ``bench_<op>.py`` test takes three parametrized fixtures from here:

- ``target``: a (device, provider) pair. CPU: ``ferfast-cpu`` (the C++ kernels), ``torch-ref`` (the eager
  spec from :mod:`ferfast.reference`) and ``torch-compile(ref)`` (``torch.compile`` of that spec). CUDA, on a
  GPU: ``ferfast-cuda``, ``ferfast-triton``, ``torch-ref`` and ``torch-compile(ref)``. A provider that cannot
  run here is skipped with the reason.
  A bench adds providers of its own with ``@pytest.mark.extra_providers("name", ...)`` (one ``target`` per
  selected device each; the bench builds their callables itself, since :meth:`Bench.impl` knows only the
  standard ones).
- ``shape``: an entry of :mod:`shapes` (``--quick``: the small ones only); ``mixup_shape`` and ``fixmatch_shape``
  take theirs from the classification registries (:data:`shapes.CLS_REGISTRIES`) the same way.
- ``bench``: :class:`Bench`, which builds the provider's callable (:meth:`Bench.impl`) and times it
  (:meth:`Bench.run`) with ``benchmark.pedantic``; results land in ``benchmark.extra_info``.

Timing rules, identical for every provider:

- the timed callable ends with ``torch.cuda.synchronize()`` on a GPU; ``setup`` (untimed) evicts the caches
  (``--warm-cache`` turns that off) and synchronizes, so each round starts cold, like ``triton.testing.do_bench``;
- each provider runs twice before ``pedantic`` (this is where ``torch.compile`` compiles, once per shape,
  mode and variant), then ``warmup_rounds`` untimed rounds, then ``rounds`` timed ones;
- ``full`` mode = forward + backward through ``torch.autograd.grad`` (no ``.grad`` accumulation is timed);
- the CPU allocator keeps freed memory in the process (:func:`ferfast.tune_cpu_allocator`) for every provider;
  ``--default-malloc`` keeps glibc's default, which page-faults every large fresh buffer back in;
- bandwidth = the minimum bytes the op must move / the median time, also given as a fraction of the
  machine's copy bandwidth (``dst.copy_(src)`` of 256 MiB fp32, read + write, measured in the same run with
  the same cache eviction). On a GPU, CUDA-event timings (no Python or sync overhead) are recorded too.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo.config

import shapes  # benchmarks/ is on sys.path: pytest's rootdir-style import of a folder without __init__.py
from ferfast.backends import resolve_backend
from ferfast.runtime import tune_cpu_allocator

CPU_PROVIDERS = ("ferfast-cpu", "torch-ref", "torch-compile(ref)")
CUDA_PROVIDERS = ("ferfast-cuda", "ferfast-triton", "torch-ref", "torch-compile(ref)")
FERFAST_PREFIX = "ferfast-"
REF = "torch-ref"
COMPILE = "torch-compile(ref)"

COPY_BYTES = 256 * 2**20  # source tensor of the copy-bandwidth measurement
COPY_REPS = 15  # timed copies (median)
GPU_FLUSH_BYTES = 256 * 2**20  # triton.testing.do_bench's L2 flush size

# Every (shape, mode, variant) of a reference function is one more torch.compile entry on the same code object.
for _name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one (torch < 2.6)
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(getattr(torch._dynamo.config, _name), 64))


# ---- options and parametrization -----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferfast benchmarks")
    group.addoption("--quick", action="store_true", help="smoke run: small shapes only, few rounds (make demo)")
    group.addoption("--gpu-only", action="store_true", help="only the CUDA providers (GPU check)")
    group.addoption("--cpu-only", action="store_true", help="only the CPU providers")
    group.addoption("--no-compile", action="store_true", help="skip the torch-compile(ref) providers")
    group.addoption(
        "--warm-cache", action="store_true", help="do not evict the caches before each timed round (default: cold)"
    )
    group.addoption(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default allocator (default: ferfast.tune_cpu_allocator() for every provider alike)",
    )
    group.addoption("--bench-rounds", type=int, default=None, help="timed rounds per benchmark (default 25, quick 3)")
    group.addoption(
        "--bench-warmup",
        type=int,
        default=None,
        help="untimed warm-up rounds after the 2 warm-up calls (default 3, quick 1)",
    )
    group.addoption(
        "--bench-jsonl",
        default=None,
        metavar="PATH",
        help="also append each result to PATH as it finishes (survives a killed run; report.py reads it)",
    )


ALLOCATOR = {"tuned": False}


def pytest_configure(config: pytest.Config) -> None:
    # Freed large buffers stay in the process (see ferfast.runtime): every provider allocates its outputs and
    # gradients each round, and glibc's default would page-fault them all back in. Applied once, to all alike.
    config.addinivalue_line(
        "markers", "extra_providers(*names): providers a bench adds to the standard ones of every selected device"
    )
    if not config.getoption("default_malloc"):
        ALLOCATOR["tuned"] = tune_cpu_allocator()
    for out in (config.getoption("benchmark_json", None), config.getoption("bench_jsonl", None)):
        if out:  # pytest-benchmark writes its JSON after the whole run; a missing folder would lose the results
            Path(out).parent.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    warmup_rounds: int
    cold_cache: bool
    compile: bool
    jsonl: str | None = None


def _settings(config: pytest.Config) -> Settings:
    quick = bool(config.getoption("quick"))
    rounds = config.getoption("bench_rounds") or (3 if quick else 25)
    warmup = config.getoption("bench_warmup")
    return Settings(
        quick=quick,
        rounds=max(1, rounds),
        warmup_rounds=(1 if quick else 3) if warmup is None else max(0, warmup),
        cold_cache=not config.getoption("warm_cache"),
        compile=not config.getoption("no_compile"),
        jsonl=config.getoption("bench_jsonl"),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "shape" in metafunc.fixturenames:
        names = [s.name for s in shapes.selected_shapes(bool(config.getoption("quick")))]
        metafunc.parametrize("shape", names, ids=names, indirect=True)  # the JSON keeps the name
    for fixture in shapes.CLS_REGISTRIES:
        if fixture in metafunc.fixturenames:
            names = [s.name for s in shapes.selected_cls_shapes(fixture, bool(config.getoption("quick")))]
            metafunc.parametrize(fixture, names, ids=names, indirect=True)
    if "target" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("extra_providers")
        extra = tuple(marker.args) if marker else ()
        combos: list[tuple[str, str]] = []
        if not config.getoption("gpu_only"):
            combos += [("cpu", p) for p in (*CPU_PROVIDERS, *extra)]
        if not config.getoption("cpu_only"):
            combos += [("cuda", p) for p in (*CUDA_PROVIDERS, *extra)]
        metafunc.parametrize("target", combos, ids=[f"{p}@{d}" for d, p in combos], indirect=True)


# ---- providers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    device: torch.device
    provider: str

    @property
    def is_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def backend(self) -> str | None:
        """ferfast backend name of a ``ferfast-*`` provider, else None."""
        return self.provider.removeprefix(FERFAST_PREFIX) if self.provider.startswith(FERFAST_PREFIX) else None


def unavailable_reason(device: str, provider: str, settings: Settings) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU here"
    if provider == COMPILE and not settings.compile:
        return "torch.compile providers are off (--no-compile)"
    if provider.startswith(FERFAST_PREFIX):
        backend = provider.removeprefix(FERFAST_PREFIX)
        try:
            resolve_backend(torch.device(device), backend)
        except ValueError as exc:
            return f"{provider}: {exc}"
        if backend == "triton":
            try:
                import ferfast.triton  # noqa: F401
            except Exception as exc:  # missing module, triton/torch mismatch
                return f"{provider}: ferfast.triton cannot be imported ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config) -> Settings:
    return _settings(pytestconfig)


@pytest.fixture
def shape(request: pytest.FixtureRequest) -> shapes.MAEShape:
    return shapes.by_name(request.param)


@pytest.fixture
def mixup_shape(request: pytest.FixtureRequest) -> shapes.ClsShape:
    return shapes.cls_by_name("mixup_shape", request.param)


@pytest.fixture
def fixmatch_shape(request: pytest.FixtureRequest) -> shapes.ClsShape:
    return shapes.cls_by_name("fixmatch_shape", request.param)


@pytest.fixture
def target(request: pytest.FixtureRequest, bench_settings: Settings) -> Target:
    device, provider = request.param
    reason = unavailable_reason(device, provider, bench_settings)
    if reason:
        pytest.skip(reason)
    return Target(torch.device(device), provider)


# ---- cache eviction and copy bandwidth -----------------------------------------------------------------------


def _last_level_cache_bytes() -> int | None:
    best = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * scale
        if best is None or level > best[0]:
            best = (level, size)
    return best[1] if best else None


class Flusher:
    """Evicts the caches between timed rounds: reads a buffer of twice the CPU's last-level cache
    (64 MiB to 1 GiB), or zeroes 256 MiB on a GPU (``do_bench``'s L2 flush)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def nbytes(self, device: torch.device) -> int:
        if device.type == "cuda":
            return GPU_FLUSH_BYTES
        llc = _last_level_cache_bytes() or 128 * 2**20
        return min(max(2 * llc, 64 * 2**20), 2**30)

    def __call__(self, device: torch.device) -> None:
        key = str(device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = torch.ones(self.nbytes(device) // 4, dtype=torch.float32, device=device)
            self._buffers[key] = buf
        if device.type == "cuda":
            buf.zero_()
        else:
            buf.sum()  # reads leave clean lines: no write-back lands in the next timed region


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CopyBandwidth:
    """The machine's copy bandwidth per device, measured once per session: ``dst.copy_(src)`` of a 256 MiB
    fp32 tensor, bytes = read + write = 2 * 256 MiB, median of 15 copies (cache evicted before each)."""

    def __init__(self, flusher: Flusher, cold_cache: bool) -> None:
        self._flusher = flusher
        self._cold = cold_cache
        self.results: dict[str, dict[str, float]] = {}

    def __call__(self, device: torch.device) -> float:
        key = str(device)
        if key not in self.results:
            self.results[key] = self._measure(device)
        return self.results[key]["GB/s"]

    def _measure(self, device: torch.device) -> dict[str, float]:
        src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=device).uniform_()
        dst = torch.zeros_like(src)
        for _ in range(3):
            dst.copy_(src)
        _sync(device)
        times = []
        for _ in range(COPY_REPS):
            if self._cold:
                self._flusher(device)
            _sync(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                dst.copy_(src)
                times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        return {"GB/s": 2 * COPY_BYTES / median / 1e9, "median_ms": median * 1e3, "reps": COPY_REPS}


_COPY_KEY = pytest.StashKey[CopyBandwidth]()


@pytest.fixture(scope="session")
def flusher() -> Flusher:
    return Flusher()


@pytest.fixture(scope="session")
def copy_bandwidth(pytestconfig: pytest.Config, flusher: Flusher, bench_settings: Settings) -> CopyBandwidth:
    meter = CopyBandwidth(flusher, bench_settings.cold_cache)
    pytestconfig.stash[_COPY_KEY] = meter
    return meter


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    meter = config.stash.get(_COPY_KEY, None)
    if meter is None or not meter.results:
        return
    settings = _settings(config)
    terminalreporter.section("ferfast: copy bandwidth measured in this run")
    for device, res in meter.results.items():
        terminalreporter.write_line(
            f"{device}: {res['GB/s']:.1f} GB/s (copy_ of {COPY_BYTES >> 20} MiB fp32, read+write, "
            f"median of {res['reps']:.0f}: {res['median_ms']:.3f} ms); torch threads {torch.get_num_threads()}, "
            f"{'cold' if settings.cold_cache else 'warm'} caches, {settings.rounds} rounds"
        )


# ---- the benchmark helper ------------------------------------------------------------------------------------


class Bench:
    """Builds a provider's callable and times it with ``benchmark.pedantic``."""

    def __init__(
        self, benchmark: Any, target: Target, settings: Settings, copy_bandwidth: CopyBandwidth, flusher: Flusher
    ) -> None:
        self.benchmark = benchmark
        self.target = target
        self.settings = settings
        self.copy_bandwidth = copy_bandwidth
        self.flusher = flusher

    def impl(self, *, ferfast: Callable[[str], Callable], ref: Callable) -> Callable:
        """The provider's function: ``ferfast(backend)`` for ``ferfast-*``, ``ref`` (a function of tensors only,
        built from :mod:`ferfast.reference`) for ``torch-ref``, and ``torch.compile(ref)`` for
        ``torch-compile(ref)``: static shapes, compiled in :meth:`run`'s warm-up, before any timing."""
        provider = self.target.provider
        if self.target.backend is not None:
            return ferfast(self.target.backend)
        if provider == REF:
            return ref
        if provider == COMPILE:
            return torch.compile(ref, dynamic=False)
        raise ValueError(f"unknown provider {provider!r}")

    def require_kernels(self, *ops: str) -> None:
        """Skips a ``ferfast-*`` provider whose backend has no kernel for one of ``ops`` on its device (an op
        not ported to that backend yet) instead of failing in the middle of the timing."""
        backend = self.target.backend
        if backend is None:
            return
        namespace = "ferfast_triton" if backend == "triton" else "ferfast"
        key = "CUDA" if self.target.is_gpu else "CPU"
        registered = set(torch._C._dispatch_get_all_op_names())
        missing = []
        for op in ops:
            name = f"{namespace}::{op}"
            if name not in registered:
                missing.append(op)
            elif namespace == "ferfast" and not torch._C._dispatch_has_kernel_for_dispatch_key(name, key):
                missing.append(op)
        if missing:
            pytest.skip(f"{self.target.provider}: no {key} kernel for {', '.join(missing)} ({namespace})")

    def run(
        self,
        *,
        op: str,
        mode: str,
        shape: shapes.MAEShape | shapes.ClsShape,
        fn: Callable,
        args: tuple,
        nbytes: int | None,
        variant: str = "",
        shape_desc: str = "",
        fresh_args: Callable[[], tuple] | None = None,
        images: int | None = None,
        extra_info: dict[str, Any] | None = None,
    ) -> None:
        """Times ``fn(*args)`` (synchronized on a GPU) and records what :mod:`report` prints.

        ``nbytes``: the minimum bytes the op must move (each input read once, each output written once);
        ``None`` for a call that is not memory-bound (a training step): no bandwidth is recorded.
        ``fresh_args``: for a ``fn`` that overwrites its inputs, builds new ``args`` before every warm-up and
        timed round, in the untimed setup (before the cache eviction); the CUDA-event measurements reuse
        ``args``.
        ``images``: images one call processes; records ``images_per_s`` (and ``gpu_event_images_per_s``).
        ``extra_info``: more fields for ``benchmark.extra_info`` (they override the standard ones).
        """
        b, t, s = self.benchmark, self.target, self.settings
        device = t.device
        base_group = b.group or op
        b.group = " | ".join(x for x in (base_group, device.type, shape.name, mode, variant) if x)

        def timed(*a: Any) -> Any:
            out = fn(*a)
            if t.is_gpu:
                torch.cuda.synchronize(device)
            return out

        def setup() -> tuple[tuple, dict]:
            round_args = args if fresh_args is None else fresh_args()
            if s.cold_cache:
                self.flusher(device)
            _sync(device)
            return round_args, {}

        copy_gbs = self.copy_bandwidth(device)  # measured before the first timed op of the session
        for _ in range(2):  # warm-up: compiles torch.compile providers, fills allocator caches
            timed(*(args if fresh_args is None else fresh_args()))
        b.pedantic(timed, setup=setup, rounds=s.rounds, warmup_rounds=s.warmup_rounds)

        info: dict[str, Any] = {
            "op": op,
            "provider": t.provider,
            "device": device.type,
            "mode": mode,
            "variant": variant,
            "shape": shape.name,
            "shape_desc": shape_desc,
            "dtype": shape.dtype_name,
            "bytes": None if nbytes is None else int(nbytes),
            "copy_GB/s": copy_gbs,
            "cache": "cold" if s.cold_cache else "warm",
            "threads": torch.get_num_threads(),
            "cpu_allocator": "tuned" if ALLOCATOR["tuned"] else "default",
        }
        stats = getattr(b, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            median = stats.stats.median
            info["median_ms"] = median * 1e3
            if nbytes is not None:
                info["GB/s"] = nbytes / median / 1e9
                info["copy_fraction"] = info["GB/s"] / copy_gbs
            if images is not None:
                info["images"] = int(images)
                info["images_per_s"] = images / median
        if t.is_gpu:
            info.update(self._gpu_measurements(fn, args, nbytes, copy_gbs))
            if images is not None:
                info["gpu_event_images_per_s"] = images / (info["gpu_event_ms"] / 1e3)
        info.update(extra_info or {})
        b.extra_info.update(info)
        if s.jsonl and stats is not None:
            self._append_jsonl(s.jsonl, info, stats.stats)

    def _append_jsonl(self, path: str, info: dict[str, Any], stats: Any) -> None:
        """One pytest-benchmark-like record per line, written at once (``report.py`` reads ``.jsonl`` files)."""
        record = {
            "group": self.benchmark.group,
            "name": getattr(self.benchmark, "name", ""),
            "fullname": getattr(self.benchmark, "fullname", ""),
            "extra_info": info,
            "stats": {k: getattr(stats, k) for k in ("min", "max", "mean", "median", "iqr", "rounds")},
        }
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _gpu_measurements(self, fn: Callable, args: tuple, nbytes: int | None, copy_gbs: float) -> dict[str, float]:
        device = self.target.device
        reps = self.settings.rounds
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        torch.cuda.synchronize(device)
        for start, end in zip(starts, ends):
            if self.settings.cold_cache:
                self.flusher(device)
            start.record()
            fn(*args)
            end.record()
        torch.cuda.synchronize(device)
        event_s = statistics.median(a.elapsed_time(z) for a, z in zip(starts, ends)) / 1e3

        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn(*args)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out = {
            "gpu_event_ms": event_s * 1e3,
            "peak_mem_MiB": peak / 2**20,
            "peak_mem_extra_MiB": (peak - before) / 2**20,
        }
        if nbytes is not None:
            out["gpu_event_GB/s"] = nbytes / event_s / 1e9
            out["gpu_event_copy_fraction"] = nbytes / event_s / 1e9 / copy_gbs
        return out


@pytest.fixture
def bench(
    target: Target, benchmark: Any, bench_settings: Settings, copy_bandwidth: CopyBandwidth, flusher: Flusher
) -> Bench:
    # ``target`` first: a skipped provider must skip before pytest-benchmark's fixture is set up.
    return Bench(benchmark, target, bench_settings, copy_bandwidth, flusher)


@pytest.fixture
def make_bench(
    benchmark: Any, bench_settings: Settings, copy_bandwidth: CopyBandwidth, flusher: Flusher
) -> Callable[[torch.device, str], Bench]:
    """For a bench with providers of its own (not ``target``'s): ``make_bench(device, provider)`` -> :class:`Bench`.

    Request it after the fixture that decides whether the provider runs, so that a skip comes before
    pytest-benchmark's fixture is set up."""

    def make(device: torch.device, provider: str) -> Bench:
        return Bench(benchmark, Target(torch.device(device), provider), bench_settings, copy_bandwidth, flusher)

    return make


@pytest.fixture(autouse=True)
def _fresh_state() -> Any:
    torch.manual_seed(0)
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
