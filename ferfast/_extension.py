"""Find and load the native op library ``ferfast._C`` (torchvision's ``extension.py`` pattern).

A pure-Python install is legal: without ``_C`` the CPU/CUDA backends are absent and
ferfast runs on the reference (and Triton) backends. A library built for another
torch is refused with a clear "built for X, you have Y" message (xformers' rule).
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["BUILD_INFO", "HAS_CUDA_OPS", "HAS_OPS", "LOAD_ERROR", "library_path"]

HAS_OPS: bool = False
HAS_CUDA_OPS: bool = False
BUILD_INFO: dict[str, Any] = {}
LOAD_ERROR: str | None = None
library_path: str | None = None


def _torch_release(version: str) -> str:
    return version.split("+")[0]


def _load() -> None:
    global HAS_OPS, HAS_CUDA_OPS, BUILD_INFO, LOAD_ERROR, library_path
    if os.environ.get("FERFAST_DISABLE_EXTENSION", "0") == "1":
        LOAD_ERROR = "disabled by FERFAST_DISABLE_EXTENSION=1"
        return
    spec = importlib.util.find_spec("ferfast._C")
    if spec is None or spec.origin is None:
        LOAD_ERROR = "ferfast._C is not built (pip install --no-build-isolation -e . builds it)"
        return
    info_path = Path(spec.origin).with_name("_build_info.json")
    if info_path.is_file():
        BUILD_INFO = json.loads(info_path.read_text())
    built_for = BUILD_INFO.get("torch_version", "")
    if built_for and _torch_release(built_for) != _torch_release(torch.__version__):
        LOAD_ERROR = (
            f"ferfast._C was built for torch {built_for}, but torch {torch.__version__} is installed; "
            "rebuild it (pip install --no-build-isolation -e .)"
        )
        warnings.warn(LOAD_ERROR + "; using the reference ops", RuntimeWarning, stacklevel=3)
        return
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as exc:  # undefined symbols, wrong ABI
        LOAD_ERROR = f"cannot load {spec.origin}: {exc}"
        warnings.warn(LOAD_ERROR + "; using the reference ops", RuntimeWarning, stacklevel=3)
        return
    library_path = spec.origin
    HAS_OPS = True
    HAS_CUDA_OPS = torch.ops.ferfast._cuda_version() > 0


_load()
