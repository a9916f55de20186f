"""``ferfast.info()`` and ``python -m ferfast.info``: what was built and which backend is in use."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

import ferfast
from ferfast import _extension, backends
from ferfast._info import info_dict


@pytest.fixture
def global_backend():
    saved = backends.default_backend()
    yield
    backends.set_default_backend(saved)


def test_info_mentions_the_native_library_and_the_backend_in_use():
    text = ferfast.info()
    assert isinstance(text, str)
    assert f"ferfast {ferfast.__version__}" in text
    assert f"torch {torch.__version__}" in text
    if _extension.HAS_OPS:
        assert f"native library: {_extension.library_path}" in text
        assert "CUDA kernels: " + ("yes" if _extension.HAS_CUDA_OPS else "no") in text
    else:
        assert "native library: not loaded" in text
    in_use = backends.resolve_backend(torch.device("cpu"))
    assert f"cpu: in use {in_use!r}" in text
    assert f"FERFAST_BACKEND: {backends.default_backend()}" in text


def test_info_follows_the_global_choice(global_backend):
    backends.set_default_backend("reference")
    text = ferfast.info()
    assert "FERFAST_BACKEND: reference" in text
    assert "cpu: in use 'reference'" in text


def test_info_dict_is_plain_data():
    data = info_dict()
    assert data["ferfast"] == ferfast.__version__
    assert data["native_library"] == _extension.library_path
    assert data["backends"]["cpu"]["available"] == backends.available_backends("cpu")
    assert data["backends"]["cpu"]["in_use"] in data["backends"]["cpu"]["available"]
    if _extension.HAS_OPS:
        assert data["build_info"]["torch_version"].split("+")[0] == torch.__version__.split("+")[0]


def test_info_stays_callable_after_importing_the_info_module(monkeypatch):
    """``python -m ferfast.info`` (or ``from ferfast.info import main``) imports the submodule ``ferfast.info``;
    the function ``ferfast.info`` must survive that."""
    monkeypatch.setattr(ferfast, "info", ferfast.info)  # undo the damage for the other tests if it happens
    monkeypatch.delitem(sys.modules, "ferfast.info", raising=False)
    importlib.import_module("ferfast.info")
    assert callable(ferfast.info)
    assert "native library" in ferfast.info()


@pytest.mark.parametrize("backend_env", [None, "reference"])
def test_python_m_ferfast_info(backend_env):
    env = dict(os.environ)
    env.pop("FERFAST_BACKEND", None)
    if backend_env is not None:
        env["FERFAST_BACKEND"] = backend_env
    result = subprocess.run(
        [sys.executable, "-m", "ferfast.info"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"ferfast {ferfast.__version__}")
    assert "native library" in out
    expected = backend_env or ("cpu" if _extension.HAS_OPS else "reference")
    assert f"cpu: in use {expected!r}" in out
    assert f"FERFAST_BACKEND: {backend_env or 'auto'}" in out
