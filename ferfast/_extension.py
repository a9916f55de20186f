"""Find and load the native op library ``ferfast._C`` (torchvision's ``extension.py`` pattern).

A pure-Python install is legal: without ``_C`` the CPU/CUDA backends are absent and
ferfast runs on the reference (and Triton) backends. A library built for another
torch is refused with a clear "built for X, you have Y" message (xformers' rule).

What the install *promises* is recorded too, so that a library that should load but does not
is an error where it matters (the test suite, ``python -m ferfast.info``, the GPU check) instead of
a silent fall-back to the reference ops: :data:`EXPECTED` is true when the build installed ``_C``
(its file, or the ``_build_info.json`` the build writes next to it, is there), :data:`EXPECTED_CUDA`
when that build info says the CUDA kernels were compiled. :func:`load_problems` lists the broken
promises. ``FERFAST_DISABLE_EXTENSION=1`` is the one deliberate opt-out: the library is not loaded
and nothing is expected of it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BUILD_INFO",
    "BUILD_INFO_PATH",
    "DISABLED",
    "DISABLE_ENV",
    "EXPECTED",
    "EXPECTED_CUDA",
    "HAS_CUDA_OPS",
    "HAS_OPS",
    "LOAD_ERROR",
    "library_path",
    "load_problems",
]

#: ``FERFAST_DISABLE_EXTENSION=1``: do not load ``ferfast._C`` (the reference and Triton backends only)
DISABLE_ENV = "FERFAST_DISABLE_EXTENSION"

HAS_OPS: bool = False
HAS_CUDA_OPS: bool = False
BUILD_INFO: dict[str, Any] = {}
BUILD_INFO_PATH: str | None = None
LOAD_ERROR: str | None = None
library_path: str | None = None
#: the native library was switched off on purpose (``FERFAST_DISABLE_EXTENSION=1``)
DISABLED: bool = False
#: the install says ``ferfast._C`` should load here: the build installed the library or its build info
EXPECTED: bool = False
#: the build info says the library was compiled with its CUDA kernels
EXPECTED_CUDA: bool = False

_BUILD_INFO_NAME = "_build_info.json"


def _torch_release(version: str) -> str:
    return version.split("+")[0]


def _truthy(value: Any) -> bool:
    """CMake's spellings of true (``ON``, ``TRUE``, ``1``, ``YES``, ``Y``)."""
    return str(value).strip().upper() in {"ON", "TRUE", "1", "YES", "Y"}


def _find_build_info(origin: str | None) -> Path | None:
    """The build's ``_build_info.json``: next to ``_C``, else in a folder of the ``ferfast`` package."""
    candidates: list[Path] = []
    if origin:
        candidates.append(Path(origin).with_name(_BUILD_INFO_NAME))
    package = importlib.util.find_spec("ferfast")
    for location in (package.submodule_search_locations or []) if package else []:
        candidates.append(Path(location) / _BUILD_INFO_NAME)
    return next((path for path in candidates if path.is_file()), None)


def _load() -> None:
    global HAS_OPS, HAS_CUDA_OPS, BUILD_INFO, BUILD_INFO_PATH, LOAD_ERROR, library_path
    global DISABLED, EXPECTED, EXPECTED_CUDA
    if os.environ.get(DISABLE_ENV, "0") == "1":
        DISABLED = True
        LOAD_ERROR = f"disabled by {DISABLE_ENV}=1"
        return
    spec = importlib.util.find_spec("ferfast._C")
    origin = spec.origin if spec is not None else None
    info_path = _find_build_info(origin)
    if info_path is not None:
        BUILD_INFO_PATH = str(info_path)
        try:
            BUILD_INFO = json.loads(info_path.read_text())
        except (OSError, ValueError) as exc:
            BUILD_INFO = {"error": f"unreadable {info_path}: {exc}"}
    EXPECTED = info_path is not None or (origin is not None and Path(origin).is_file())
    EXPECTED_CUDA = EXPECTED and _truthy(BUILD_INFO.get("with_cuda", "OFF"))
    if origin is None:
        LOAD_ERROR = "ferfast._C is not built (pip install --no-build-isolation -e . builds it)"
        if EXPECTED:
            LOAD_ERROR = f"ferfast._C is missing, but the build installed {info_path}: rebuild (pip install -e .)"
        return
    built_for = BUILD_INFO.get("torch_version", "")
    if built_for and _torch_release(built_for) != _torch_release(torch.__version__):
        LOAD_ERROR = (
            f"ferfast._C was built for torch {built_for}, but torch {torch.__version__} is installed; "
            "rebuild it (pip install --no-build-isolation -e .)"
        )
        warnings.warn(LOAD_ERROR + "; using the reference ops", RuntimeWarning, stacklevel=3)
        return
    try:
        torch.ops.load_library(origin)
    except (OSError, RuntimeError) as exc:  # undefined symbols, wrong ABI, a missing or corrupt file
        LOAD_ERROR = f"cannot load {origin}: {exc}"
        warnings.warn(LOAD_ERROR + "; using the reference ops", RuntimeWarning, stacklevel=3)
        return
    library_path = origin
    HAS_OPS = True
    HAS_CUDA_OPS = torch.ops.ferfast._cuda_version() > 0


def load_problems(require: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Why the native library is not what the install promises (empty when it is).

    Always checked: the build installed ``_C`` but it did not load; its build info says CUDA kernels were
    compiled but the loaded library has none. ``require`` adds demands: ``"ext"`` (the library must be loaded)
    and ``"cuda"`` (a CUDA GPU and the CUDA kernels must be there). ``FERFAST_DISABLE_EXTENSION=1`` waives the
    promises, not the demands.
    """
    unknown = set(require) - {"ext", "cuda"}
    if unknown:
        raise ValueError(f"unknown requirement(s) {sorted(unknown)}; known: ext, cuda")
    problems: list[str] = []
    if not DISABLED and EXPECTED and not HAS_OPS:
        problems.append(
            f"the build installed ferfast._C (build info: {BUILD_INFO_PATH or 'none'}) but it did not load: "
            f"{LOAD_ERROR} (set {DISABLE_ENV}=1 to run without it on purpose)"
        )
    if not DISABLED and HAS_OPS and EXPECTED_CUDA and not HAS_CUDA_OPS:
        problems.append(
            f"the build info ({BUILD_INFO_PATH}) says the CUDA kernels were compiled, but {library_path} has none"
        )
    if ("ext" in require or "cuda" in require) and not HAS_OPS and not problems:
        problems.append(f"ferfast._C is required but not loaded: {LOAD_ERROR}")
    if "cuda" in require:
        if not torch.cuda.is_available():
            problems.append("the CUDA kernels are required but torch sees no CUDA GPU")
        elif HAS_OPS and not HAS_CUDA_OPS:
            problems.append(
                f"the CUDA kernels are required but {library_path} was built without them "
                f"(build info with_cuda={BUILD_INFO.get('with_cuda', '?')}; build with FERFAST_BUILD_CUDA=ON)"
            )
    return problems


_load()
