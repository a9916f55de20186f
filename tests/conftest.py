"""Shared fixtures of ferfast's tests.

Triton's CPU interpreter must be switched on before anything imports triton, so this
runs first: ``import torch`` does not import triton, and it tells us whether a GPU is
usable. Without one, Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random

import numpy as np
import pytest

import ferfast  # noqa: F401  (loads the native library and registers its ops)
from tests.utils import backend_device


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
