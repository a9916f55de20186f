"""``ferfast.__all__``: every public name resolves, and ``import ferfast`` stays lazy."""

import subprocess
import sys

import pytest

import ferfast


@pytest.mark.parametrize("name", ferfast.__all__)
def test_every_public_name_resolves(name):
    value = getattr(ferfast, name)
    assert value is not None
    assert name in dir(ferfast)


def test_the_lazy_map_holds_only_public_names():
    assert set(ferfast._HOMES) <= set(ferfast.__all__)


def test_what_users_call_is_public():
    for name in (
        "pretrain",
        "finetune",
        "semisup",
        "evaluate",
        "load_model",
        "predict",
        "TrainConfig",
        "create_model",
        "build_loader",
        "info",
        "facemix_loss",
        "face_mixup",
    ):
        assert name in ferfast.__all__, name


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        ferfast.not_a_name  # noqa: B018


def test_import_ferfast_imports_nothing_heavy():
    code = (
        "import sys, ferfast\n"
        "print(sorted(m for m in ('torch', 'ferfast.data', 'ferfast.models', 'ferfast.config', 'ferfast.api',"
        " 'ferfast.ops', 'ferfast._C') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
