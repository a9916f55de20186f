"""Every op is declared once (``ferfast._registry``) and its declaration is complete.

A declaration that lacks a part (schema, reference, fake kernel, the autograd formula it promises, a test
module that tests it on each of its backends) fails here; ``test_registration.py`` checks that what the
backends register is exactly what is declared.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ferfast.ops
from ferfast import _registry
from ferfast._registry import KERNELS, NATIVE_BACKENDS, OPS, PUBLIC_NAMES, SPECS, spec
from ferfast.backends import BACKENDS as BACKEND_CHOICES
from ferfast.ops._dispatch import dispatch
from tests.utils import BACKEND_NAMES

TESTS = Path(__file__).parent
ALL = [pytest.param(s, id=s.name) for s in (*SPECS, *KERNELS)]


def _params(schema: str) -> list[str]:
    """Argument names of a schema ``(Tensor x, int n) -> ...``."""
    args = schema[1 : schema.index(") ->")]
    return [a.split()[-1] for a in args.split(",") if a.strip()]


def test_names_are_unique():
    names = [s.name for s in (*SPECS, *KERNELS)]
    assert len(names) == len(set(names))
    public = [n for s in SPECS for n in s.public]
    assert len(public) == len(set(public)), "a public name is declared by two ops"


@pytest.mark.parametrize("op", [pytest.param(s, id=s.name) for s in SPECS])
def test_declaration_has_every_part(op):
    assert re.fullmatch(r"\(.*\) -> .+", op.schema), f"{op.name}: schema {op.schema!r}"
    assert callable(op.reference), f"{op.name} has no reference"
    assert callable(op.fake), f"{op.name} has no fake kernel"
    # the reference and the fake take the op's arguments (the reference adapts ferfast.reference to the schema)
    names = _params(op.schema)
    for fn, what in ((op.reference, "reference"), (op.fake, "fake")):
        params = list(inspect.signature(fn).parameters)
        assert len(params) >= len(names), f"{op.name}'s {what} takes {params}, the schema {names}"
    # autograd: a differentiable op declares both halves, a non-differentiable one neither
    if op.differentiable:
        assert callable(op.setup_context), f"{op.name} is differentiable but declares no setup_context"
        assert op.backward is not None and callable(op.backward(_fake_kernels())), f"{op.name} declares no backward"
    else:
        assert op.setup_context is None and op.backward is None, f"{op.name}: autograd on a non-differentiable op"
    assert op.backends and set(op.backends) <= set(NATIVE_BACKENDS), op.name
    assert set(op.mutates_args) <= set(names), op.name
    assert all(f"Tensor(a!) {a}" in op.schema for a in op.mutates_args), op.name


@pytest.mark.parametrize("op", [pytest.param(s, id=s.name) for s in SPECS])
def test_ops_with_a_gradient_output_declare_autograd(op):
    """An op that computes its gradient in forward (``compute_grad``) must declare the formula that uses it."""
    if "compute_grad" in _params(op.schema):
        assert op.differentiable, f"{op.name} takes compute_grad but declares no autograd"


def _fake_kernels() -> dict:
    return {"patchify_gather": lambda *a: None, "unshuffle_tokens": lambda *a: None}


def _backends_tested(module_name: str) -> set[str]:
    """The backends a ``tests/ops`` module runs on: all of them where it parametrizes with ``BACKENDS`` or
    ``backend_cases``, else the backend names it passes as string literals."""
    tree = ast.parse((TESTS / f"{module_name}.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if names & {"BACKENDS", "backend_cases"}:
        return set(BACKEND_NAMES)
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in BACKEND_NAMES}


@pytest.mark.parametrize("op", ALL)
def test_each_backend_has_a_test_of_the_op(op):
    path = TESTS / f"{op.test_module}.py"
    assert path.is_file(), f"{op.name}: its test module tests/ops/{op.test_module}.py does not exist"
    source = path.read_text()
    assert re.search(rf"(?<![A-Za-z0-9]){re.escape(op.name)}\b", source), f"{path.name} never mentions {op.name}"
    if getattr(op, "differentiable", False):
        assert re.search(r"gradcheck|\.backward\(|autograd\.grad\(", source), f"{path.name} never tests gradients"
    missing = set(op.backends) - _backends_tested(op.test_module)
    assert not missing, f"{path.name} does not run {op.name} on {sorted(missing)}"
    importlib.import_module(f"tests.ops.{op.test_module}")  # and it imports


def test_public_names_are_derived_from_the_specs():
    assert set(ferfast.ops.__all__) == {*PUBLIC_NAMES, "set_value_checks", "value_checks"}
    for name in PUBLIC_NAMES:
        assert hasattr(ferfast.ops, name), f"ferfast.ops does not import {name}, declared public"


def test_top_level_exports_every_declared_name():
    """``ferfast/__init__.py`` stays torch-free at import (PEP 562), so it lists the op names itself; they must be
    the declared ones."""
    import ferfast

    assert set(PUBLIC_NAMES) <= set(ferfast.__all__)
    assert sorted(ferfast._OPS) == sorted(PUBLIC_NAMES)  # the lazy package's list, kept by hand, equals the specs'
    for name in PUBLIC_NAMES:
        assert getattr(ferfast, name) is getattr(ferfast.ops, name), name


def test_every_public_op_dispatches_through_the_registry():
    """No public op chooses a backend itself: ``dispatch`` is the only ``if backend == "reference"``."""
    ops_dir = Path(ferfast.ops.__file__).parent
    for path in sorted(ops_dir.glob("*.py")):
        if path.name == "_dispatch.py":
            continue
        assert '== "reference"' not in path.read_text(), f"{path.name} dispatches by hand: use _dispatch.dispatch"
    for op in SPECS:
        assert dispatch(op.name, "reference") is op.reference
        assert spec(op.name) is op
    assert set(NATIVE_BACKENDS) | {"reference", "auto"} == set(BACKEND_CHOICES)


def test_dispatch_refuses_a_backend_the_op_does_not_declare(monkeypatch):
    monkeypatch.setitem(_registry.OPS, "box_iou", replace(OPS["box_iou"], backends=("triton",)))
    with pytest.raises(ValueError, match="no 'cpu' kernel"):
        dispatch("box_iou", "cpu")


@pytest.mark.parametrize("op", [pytest.param(s, id=s.name) for s in SPECS if "compute_grad" in s.schema])
def test_reference_follows_the_schema(op):
    """The reference adapters return the op's outputs (gradients ``None``: the reference uses autograd)."""
    n_out = op.schema.split("->")[1].count("Tensor")
    args = {
        "masked_patch_mse": lambda: (torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), torch.ones(1, 4), 2, False, False),
        "facemix_loss": lambda: (
            torch.randn(2, 3),
            torch.randn(2, 3),
            torch.tensor([0, 1]),
            torch.full((2, 3), 1 / 3),
            torch.rand(2),
            torch.tensor([1, 0]),
            False,
        ),
        "fixmatch_loss": lambda: (torch.randn(2, 3), torch.randn(2, 3), 0.5, False),
    }[op.name]()
    out = op.reference(*args)
    assert len(out) == n_out
    assert out[-1] is None
