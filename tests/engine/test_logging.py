"""Run logs: the JSON-lines file, TensorBoard mirroring, summaries, progress bars and the non-finite-loss guard."""

import io
import json
import math

import numpy as np
import pytest
import torch

from ferfast.engine import MetricLogger, NonFiniteLossError
from ferfast.engine import logging as logging_module
from ferfast.engine.logging import epoch_summary, nonfinite_found, progress, tensorboard_available


class RecordingWriter:
    """Stands in for SummaryWriter: records add_scalar calls."""

    def __init__(self):
        self.scalars, self.flushed, self.closed = [], 0, False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushed += 1

    def close(self):
        self.closed = True


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_one_flushed_object_per_line(tmp_path):
    logger = MetricLogger(tmp_path / "run", tensorboard=False)
    logger.log({"loss": torch.tensor(0.5), "lr": np.float32(1.5e-4), "epoch": 0}, step=10)
    # flushed at once: a reader sees the line while the logger is still open (e.g. a killed run)
    assert read_lines(tmp_path / "run" / "log.jsonl") == [
        {"step": 10, "loss": 0.5, "lr": pytest.approx(1.5e-4), "epoch": 0}
    ]
    logger.log({"test": {"accuracy": 0.8, "confusion": np.eye(2, dtype=np.int64)}, "loss": float("nan")})
    logger.close()
    logger.log({"ignored": 1})  # after close: nothing
    lines = read_lines(tmp_path / "run" / "log.jsonl")
    assert lines[1] == {"test": {"accuracy": 0.8, "confusion": [[1, 0], [0, 1]]}, "loss": "nan"}
    assert len(lines) == 2
    # a resumed run appends to the same file
    with MetricLogger(tmp_path / "run", tensorboard=False) as again:
        again.log({"epoch": 1, "loss": -math.inf})
    assert [line.get("epoch") for line in read_lines(tmp_path / "run" / "log.jsonl")] == [0, None, 1]
    assert read_lines(tmp_path / "run" / "log.jsonl")[-1]["loss"] == "-inf"


def test_only_rank_zero_writes(tmp_path):
    writer = RecordingWriter()
    logger = MetricLogger(tmp_path / "rank1", rank=1, writer=writer)
    logger.log({"loss": 1.0}, step=0)
    logger.close()
    assert not (tmp_path / "rank1").exists() and writer.scalars == []


def test_scalars_mirrored_to_a_writer(tmp_path):
    writer = RecordingWriter()
    with MetricLogger(tmp_path, writer=writer) as logger:
        logger.log(
            {"loss": torch.tensor(0.25), "lr": 1e-3, "name": "stage1", "per_class": [0.1, 0.2]}, step=3, prefix="train"
        )
        logger.log({"test": {"accuracy": 0.9, "macro_f1": 0.8}}, step=4)
        logger.flush()
        assert writer.flushed == 1
    assert writer.scalars == [
        ("train/loss", 0.25, 3),
        ("train/lr", 1e-3, 3),
        ("test/accuracy", 0.9, 4),
        ("test/macro_f1", 0.8, 4),
    ]
    assert writer.closed


def test_tensorboard_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(logging_module, "tensorboard_available", lambda: False)
    assert MetricLogger(tmp_path / "a").writer is None  # auto: only the JSON-lines log
    with pytest.raises(ImportError, match="tensorboard"):
        MetricLogger(tmp_path / "b", tensorboard=True)


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_real_tensorboard_event_file(tmp_path):
    with MetricLogger(tmp_path) as logger:
        assert logger.writer is not None
        logger.log({"loss": 0.5}, step=1, prefix="train")
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_epoch_summary():
    line = epoch_summary(
        3, {"loss": 0.693147, "lr": 1.5e-4, "acc": torch.tensor(0.875), "n": 120}, total_epochs=100, elapsed_s=12.34
    )
    assert line == "epoch 3/100 | loss 0.6931 | lr 1.500e-04 | acc 0.8750 | n 120 | 12.3s"
    assert epoch_summary(0, {}) == "epoch 0"


def test_progress_bar(monkeypatch):
    quiet = progress(range(5), desc="stage1", file=io.StringIO())  # not a terminal: no bar
    assert quiet.disable and list(quiet) == [0, 1, 2, 3, 4]
    out = io.StringIO()
    forced = progress(iter(range(3)), desc="stage1 epoch 0", total=3, enabled=True, file=out)
    assert list(forced) == [0, 1, 2]
    forced.close()
    assert "stage1 epoch 0" in out.getvalue() and "3/3" in out.getvalue()
    monkeypatch.setattr(logging_module, "get_rank", lambda: 1)
    other_rank = progress(range(2), enabled=True, file=io.StringIO())
    assert other_rank.disable and list(other_rank) == [0, 1]


def test_nonfinite_found_policies():
    expected = r"stage1: 2 non-finite loss\(es\) in epoch 4 up to step 19 \(first at step 17\)"
    with pytest.raises(NonFiniteLossError, match=expected):
        nonfinite_found("stop", "stage1", 4, 2, 17, 19)
    with pytest.raises(NonFiniteLossError, match="on another rank"):
        nonfinite_found("stop", "pretrain", 0, 1, -1, 3)
    with pytest.warns(UserWarning, match="rolling back"):
        assert nonfinite_found("rollback", "stage2", 1, 1, 5, 7) is True
    with pytest.raises(ValueError, match="policy"):
        nonfinite_found("ignore", "stage1", 0, 1, 0, 0)
