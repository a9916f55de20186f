"""Loading pretrained / MAE checkpoints refuses files holding Python objects with a ferfast error that names the
file and explains the refusal without advising to lift it (issue 13, item 4); damaged files say so."""

from __future__ import annotations

import pathlib

import pytest
import torch

from ferfast.models import load_mae_checkpoint, load_pretrained, mae_vit_demo, read_state_dict, vit_demo
from ferfast.models.checkpoint import CorruptCheckpointError, UnsafeCheckpointError


class Payload:
    """An arbitrary class that a weights-only load refuses."""


class Exploit:
    """Unpickling this would create a file: the code a malicious checkpoint runs under a plain ``torch.load``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def assert_refused(err: pytest.ExceptionInfo, path: pathlib.Path, what: str) -> None:
    text = str(err.value)
    assert f"checkpoint {path} holds Python objects" in text and what in text
    assert "refuses to unpickle" in text and "arbitrary code" in text
    assert "weights_only" not in text and "safe_globals" not in text and "trust" not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # torch's advice is not chained either
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_load_pretrained_refuses_python_objects(tmp_path, zip_format):
    path = tmp_path / "pretrained.pth"
    torch.save({"model": mae_vit_demo().state_dict(), "x": Payload()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_pretrained(vit_demo(), path)
    assert_refused(err, path, "Payload")
    with pytest.raises(UnsafeCheckpointError):
        load_mae_checkpoint(mae_vit_demo(), path)


def test_a_malicious_checkpoint_runs_no_code(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_state_dict(path)
    assert_refused(err, path, "getattr")  # the first global it refused
    assert not marker.exists()


def test_damaged_pretrained_files_say_so(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": mae_vit_demo().state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match=r"truncated\.pth is corrupt or truncated"):
        load_pretrained(vit_demo(), truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=r"empty\.pth is empty"):
        load_pretrained(vit_demo(), empty)
