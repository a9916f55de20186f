"""Failures that show: a backend the install promises but that does not load fails the run, it does not skip.

Each case breaks one thing on purpose in a subprocess (a ``sitecustomize.py`` on ``PYTHONPATH`` patches the
interpreter before pytest starts) and runs a tiny subset of the op tests there, as CI would run them:

- ``ferfast._C`` present but failing to load (an undefined symbol), or missing while its build info is there:
  the run stops at configuration with the reason (tests/conftest.py), where it used to skip every ``cpu`` test;
- ``ferfast.triton`` failing to import while ``triton`` can run here: the run stops after collection;
- ``python -m ferfast.info`` exits 1 on the same breakages and on ``--require`` demands it cannot meet.

Controls: the same subset passes unbroken, and ``FERFAST_DISABLE_EXTENSION=1`` (the documented opt-out) skips the
``cpu`` case instead of failing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ferfast import _extension, _info

REPO = Path(__file__).resolve().parents[1]
#: one fast test of each backend: ``[cpu]`` needs ``ferfast._C``, ``[triton]`` needs ``ferfast.triton``
TARGET = "tests/ops/test_box_iou.py::test_box_iou_hand_example"
TIMEOUT_S = 300

#: ``torch.ops.load_library`` fails on ferfast's library as one with an undefined symbol would (others load)
SHIM_BROKEN_C = """
import torch

_load_library = torch.ops.load_library

def _broken_load_library(path):
    if "ferfast" not in str(path):
        return _load_library(path)
    raise OSError(f"{path}: undefined symbol: _ZN7ferfast9simulatedEv (simulated by test_loud_failures)")

torch.ops.load_library = _broken_load_library
"""

#: ``ferfast._C`` cannot be found (deleted after the build), while the build's ``_build_info.json`` stays
SHIM_MISSING_C = """
import importlib.util

_find_spec = importlib.util.find_spec

def _find_spec_without_c(name, package=None):
    if name == "ferfast._C":
        return None
    return _find_spec(name, package)

importlib.util.find_spec = _find_spec_without_c
"""

#: a module of ``ferfast.triton`` raises at import (a bug, or a triton/torch mismatch)
SHIM_BROKEN_TRITON = """
import sys

class _BreakFerfastTriton:
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "ferfast.triton.patch_loss":
            raise ImportError("cannot import name 'tl_simulated' from 'triton' (simulated by test_loud_failures)")
        return None

sys.meta_path.insert(0, _BreakFerfastTriton())
"""

needs_build = pytest.mark.skipif(
    not _extension.EXPECTED or _extension.DISABLED,
    reason="ferfast._C was not built here (a pure-Python install promises no native library)",
)
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _run(tmp_path: Path, args: list[str], shim: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository root, with ``shim`` as the subprocess's ``sitecustomize``."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "FERFAST_DISABLE_EXTENSION")}
    paths = [str(REPO)]
    if shim is not None:
        shim_dir = tmp_path / "shim"
        shim_dir.mkdir(exist_ok=True)
        (shim_dir / "sitecustomize.py").write_text(textwrap.dedent(shim))
        paths.insert(0, str(shim_dir))
    full_env["PYTHONPATH"] = os.pathsep.join(paths)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def _pytest(tmp_path: Path, k: str, shim: str | None = None, **env: str) -> subprocess.CompletedProcess:
    return _run(tmp_path, ["-m", "pytest", TARGET, "-k", k, "-q", "-p", "no:cacheprovider", "-rs"], shim, **env)


def _output(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


# ---- the native library ------------------------------------------------------------------------------------


@needs_build
def test_control_unbroken_subset_passes(tmp_path):
    """The subset the other cases break passes as it is: their failures come from the breakage alone."""
    proc = _pytest(tmp_path, "cpu")
    out = _output(proc)
    assert proc.returncode == 0, out
    assert "1 passed" in proc.stdout, out


@needs_build
def test_broken_native_library_fails_the_run(tmp_path):
    proc = _pytest(tmp_path, "cpu", SHIM_BROKEN_C)
    out = _output(proc)
    assert proc.returncode not in (0, 5), out  # 5 = nothing ran: a skip would not be a failure either
    assert "does not load where the build says it should" in out, out
    assert "simulated by test_loud_failures" in out, out
    assert "passed" not in proc.stdout and "skipped" not in proc.stdout, out


@needs_build
def test_missing_native_library_fails_the_run(tmp_path):
    proc = _pytest(tmp_path, "cpu", SHIM_MISSING_C)
    out = _output(proc)
    assert proc.returncode not in (0, 5), out
    assert "ferfast._C is missing, but the build installed" in out, out


@needs_build
def test_disabled_native_library_skips(tmp_path):
    """``FERFAST_DISABLE_EXTENSION=1`` is a deliberate opt-out: the ``cpu`` case skips and the run passes."""
    proc = _pytest(tmp_path, "cpu", None, FERFAST_DISABLE_EXTENSION="1")
    out = _output(proc)
    assert proc.returncode == 0, out
    assert "1 skipped" in proc.stdout and "disabled by FERFAST_DISABLE_EXTENSION=1" in proc.stdout, out


# ---- ferfast.triton ----------------------------------------------------------------------------------------


@needs_triton
def test_broken_ferfast_triton_fails_the_run(tmp_path):
    proc = _pytest(tmp_path, "triton", SHIM_BROKEN_TRITON)
    out = _output(proc)
    assert proc.returncode not in (0, 5), out
    assert "ferfast.triton does not load where it should" in out, out
    assert "simulated by test_loud_failures" in out, out
    assert "passed" not in proc.stdout and "skipped" not in proc.stdout, out


@needs_triton
def test_broken_ferfast_triton_spares_runs_without_triton_tests(tmp_path):
    """The Triton check applies where Triton tests were selected: a ``cpu``-only run is not stopped by it."""
    proc = _pytest(tmp_path, "reference", SHIM_BROKEN_TRITON)
    out = _output(proc)
    assert proc.returncode == 0, out
    assert "1 passed" in proc.stdout, out


# ---- python -m ferfast.info --------------------------------------------------------------------------------


@needs_build
def test_info_exits_nonzero_when_the_library_does_not_load(tmp_path):
    proc = _run(tmp_path, ["-m", "ferfast.info"], SHIM_BROKEN_C)
    out = _output(proc)
    assert proc.returncode == 1, out
    assert "FAILED: ferfast does not load what it should" in proc.stderr, out
    assert "simulated by test_loud_failures" in proc.stderr, out


def test_info_require_demands_what_is_absent(tmp_path):
    """``--require cuda`` fails without a GPU (or CUDA kernels); ``--require ext`` fails with the library off."""
    if _info.load_problems():
        pytest.fail(f"this install already breaks its promises: {_info.load_problems()}")
    plain = _run(tmp_path, ["-m", "ferfast.info"])
    assert plain.returncode == 0, _output(plain)
    cuda = _run(tmp_path, ["-m", "ferfast.info", "--require", "cuda"])
    if _info.load_problems(["cuda"]):
        assert cuda.returncode == 1, _output(cuda)
        assert "CUDA" in cuda.stderr, _output(cuda)
    else:  # a GPU machine with the CUDA kernels
        assert cuda.returncode == 0 and "required and loaded: cuda" in cuda.stdout, _output(cuda)
    off = _run(tmp_path, ["-m", "ferfast.info", "--require", "ext"], None, FERFAST_DISABLE_EXTENSION="1")
    assert off.returncode == 1, _output(off)
    assert "ferfast._C is required but not loaded: disabled by FERFAST_DISABLE_EXTENSION=1" in off.stderr
    bad = _run(tmp_path, ["-m", "ferfast.info", "--require", "gpu"])
    assert bad.returncode == 2 and "unknown --require gpu" in bad.stderr, _output(bad)


# ---- the promise logic itself, in process ------------------------------------------------------------------


def _promise(monkeypatch, **values) -> None:
    base = {
        "DISABLED": False,
        "EXPECTED": True,
        "EXPECTED_CUDA": False,
        "HAS_OPS": True,
        "HAS_CUDA_OPS": False,
        "LOAD_ERROR": None,
        "BUILD_INFO_PATH": "/x/_build_info.json",
        "library_path": "/x/_C.so",
    }
    for name, value in {**base, **values}.items():
        monkeypatch.setattr(_extension, name, value)


def test_load_problems_logic(monkeypatch):
    _promise(monkeypatch)
    assert _extension.load_problems() == []
    _promise(monkeypatch, HAS_OPS=False, LOAD_ERROR="cannot load /x/_C.so: boom")
    [problem] = _extension.load_problems()
    assert "did not load" in problem and "boom" in problem
    _promise(monkeypatch, EXPECTED_CUDA=True)  # built with CUDA kernels, loaded without them
    [problem] = _extension.load_problems()
    assert "CUDA kernels were compiled" in problem
    _promise(monkeypatch, EXPECTED=False, HAS_OPS=False, LOAD_ERROR="ferfast._C is not built")  # pure Python
    assert _extension.load_problems() == []
    assert "required but not loaded" in _extension.load_problems(["ext"])[0]
    _promise(monkeypatch, DISABLED=True, HAS_OPS=False, LOAD_ERROR="disabled")  # the opt-out waives promises
    assert _extension.load_problems() == []
    with pytest.raises(ValueError, match="unknown requirement"):
        _extension.load_problems(["gpu"])
