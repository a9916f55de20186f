"""Shared fixtures of ferfast's tests.

Triton's CPU interpreter must be switched on before anything imports triton, so this
runs first: ``import torch`` does not import triton, and it tells us whether a GPU is
usable. Without one, Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``.

Failures that show: a backend that the install promises but that does not load fails the
run instead of skipping its tests (``tests/test_loud_failures.py`` proves it).

- at configuration: the build installed ``ferfast._C`` (or its build info says it has CUDA
  kernels) but it did not load -> the run stops with the reason (exit status 4);
- after collection, when a selected test is marked ``triton``: the ``triton`` package is
  installed and can run here but ``ferfast.triton`` does not import -> the run stops
  (exit status 3).

Genuine absences still skip: no GPU, the ``triton`` package not installed, a pure-Python
install (nothing built), or ``FERFAST_DISABLE_EXTENSION=1`` (the documented opt-out).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random

import numpy as np
import pytest

import ferfast  # noqa: F401  (loads the native library and registers its ops)
from ferfast import _extension, _info
from tests.utils import backend_device


def pytest_configure(config: pytest.Config) -> None:
    """Stop the run when the native library does not load although the build installed it."""
    native = _extension.load_problems()  # the native promises only: ferfast.triton is checked after collection
    if native:
        raise pytest.UsageError(
            "ferfast's native library does not load where the build says it should:\n  - " + "\n  - ".join(native)
        )


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only the tests that will run count
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Stop the run when selected Triton tests would skip because ``ferfast.triton`` is broken."""
    if not any(item.get_closest_marker("triton") for item in items):
        return
    problem = _info.triton_problem()
    if problem:
        pytest.exit(f"ferfast.triton does not load where it should: {problem}", returncode=3)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def device(backend):
    """The device a backend's inputs live on (skips when the backend cannot run here).

    Tests parametrized by ``backend`` (see ``tests.utils.BACKENDS``) request this fixture.
    """
    return backend_device(backend)
