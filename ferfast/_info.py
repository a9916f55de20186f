"""Build and backend report behind ``ferfast.info()`` and ``python -m ferfast.info``."""

from __future__ import annotations

import platform

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
    lines = [f"ferfast {data['ferfast']} (python {data['python']}, torch {data['torch']}, CUDA {data['torch_cuda']}, "
             f"triton {data['triton']})"]
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
    lines.append(f"  DALI: {data['dali'] or 'not installed (loaders use torch)'}; "
                 f"ferfast DALI plugin: {data['dali_plugin'] or 'not built'}")
    return "\n".join(lines)


def main() -> None:
    print(info())


if __name__ == "__main__":
    main()
