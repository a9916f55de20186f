"""Build and backend report behind ``ferfast.info()`` and ``python -m ferfast.info``.

``python -m ferfast.info`` exits 1 when the install breaks its promises (:func:`load_problems`): the build
installed ``ferfast._C`` but it does not load, its CUDA kernels were built but are not there, or the
``triton`` package is installed (and can run here) but ``ferfast.triton`` does not import.
``--require ext|cuda|triton`` (repeatable, or comma-separated) also demands what is not promised, for a
machine that must run them (``benchmarks/gpu_check.sh`` runs ``--require cuda --require triton``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys

import torch

from ferfast import _extension
from ferfast._version import __version__
from ferfast.backends import available_backends, default_backend, resolve_backend, triton_available


def info_dict() -> dict:
    """The build and runtime configuration as a plain dict."""
    from ferfast.data.dali_loader import plugin_path  # here: `import ferfast` stays free of the data layer

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "ferfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "native_library": _extension.library_path,
        "native_library_error": _extension.LOAD_ERROR,
        "native_library_expected": _extension.EXPECTED,
        "native_cuda_kernels": _extension.HAS_CUDA_OPS,
        "build_info": dict(_extension.BUILD_INFO),
        "FERFAST_BACKEND": default_backend(),
        "triton_runs_on": [d for d in ("cuda", "cpu") if triton_available(d)],
        "backends": {
            d: {"available": available_backends(d), "in_use": resolve_backend(torch.device(d))} for d in devices
        },
        "dali": _dali_version(),
        "dali_plugin": str(plugin_path()) if plugin_path() else None,
    }


def _dali_version() -> str | None:
    """The installed NVIDIA DALI wheel's version (without importing DALI), or None."""
    from importlib import metadata

    for dist in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali"):
        try:
            return f"{metadata.version(dist)} ({dist})"
        except metadata.PackageNotFoundError:
            continue
    return None


def info() -> str:
    """A human-readable report of :func:`info_dict`; also printed by ``python -m ferfast.info``."""
    data = info_dict()
    lines = [
        f"ferfast {data['ferfast']} (python {data['python']}, torch {data['torch']}, CUDA {data['torch_cuda']}, "
        f"triton {data['triton']})"
    ]
    lines.append(f"  GPU: {data['gpu'] or 'none'}")
    if data["native_library"]:
        lines.append(f"  native library: {data['native_library']}")
        lines.append(f"    CUDA kernels: {'yes' if data['native_cuda_kernels'] else 'no'}")
        for key, value in data["build_info"].items():
            lines.append(f"    {key}: {value}")
    else:
        lines.append(f"  native library: not loaded ({data['native_library_error']})")
    lines.append(f"  FERFAST_BACKEND: {data['FERFAST_BACKEND']}")
    lines.append(f"  Triton runs on: {', '.join(data['triton_runs_on']) or 'nothing here'}")
    for device, entry in data["backends"].items():
        lines.append(f"  {device}: in use {entry['in_use']!r}, available {entry['available']}")
    lines.append(
        f"  DALI: {data['dali'] or 'not installed (loaders use torch)'}; "
        f"ferfast DALI plugin: {data['dali_plugin'] or 'not built'}"
    )
    return "\n".join(lines)


REQUIREMENTS = ("ext", "cuda", "triton")


def triton_problem(required: bool = False) -> str | None:
    """Why ``ferfast.triton`` cannot be used here although it should, or ``None``.

    Genuinely absent (no problem unless ``required``): the ``triton`` package is not installed, or there is
    no GPU and ``TRITON_INTERPRET`` is not 1. A problem: ``triton`` can run here but ``ferfast.triton`` fails
    to import (a bug, or a triton/torch mismatch).
    """
    if importlib.util.find_spec("triton") is None:
        return "ferfast.triton is required but the triton package is not installed" if required else None
    runs_here = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"
    if not runs_here:
        return "ferfast.triton is required but there is no GPU (and TRITON_INTERPRET is not 1)" if required else None
    try:
        importlib.import_module("ferfast.triton")
    except Exception as exc:  # any import-time failure is the problem being reported
        return f"the triton package is installed but `import ferfast.triton` failed: {type(exc).__name__}: {exc}"
    return None


def load_problems(require: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Broken promises of the install (see the module docstring), plus the unmet ``require`` demands."""
    unknown = set(require) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"unknown requirement(s) {sorted(unknown)}; known: {', '.join(REQUIREMENTS)}")
    problems = _extension.load_problems([r for r in require if r != "triton"])
    triton = triton_problem(required="triton" in require)
    if triton:
        problems.append(triton)
    return problems


def main(argv: list[str] | None = None) -> int:
    """Print the report; return 1 (``python -m ferfast.info``'s exit status) when :func:`load_problems` finds any."""
    parser = argparse.ArgumentParser(
        prog="python -m ferfast.info", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="WHAT",
        help=f"also fail unless WHAT runs here: {', '.join(REQUIREMENTS)} (repeatable, or comma-separated)",
    )
    args = parser.parse_args(argv)
    require = [r.strip() for item in args.require for r in item.split(",") if r.strip()]
    bad = sorted(set(require) - set(REQUIREMENTS))
    if bad:
        parser.error(f"unknown --require {', '.join(bad)}; choose from {', '.join(REQUIREMENTS)}")
    print(info())
    problems = load_problems(require)
    if problems:
        print("\nFAILED: ferfast does not load what it should:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    if require:
        print(f"\nrequired and loaded: {', '.join(require)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
