"""``log.jsonl`` holds each step once after a resume: the records that a killed run wrote after its last checkpoint
(and a line cut short by the kill) are dropped at start-up; other stages' records stay."""

from __future__ import annotations

import json

import pytest

from ferfast.engine.checkpoint import load_checkpoint
from ferfast.engine.logging import MetricLogger
from tests.engine.test_loop import faces, run  # noqa: F401  (faces: a module-scoped fixture)
from tests.engine.test_mid_epoch_resume import Killed, killing_at


def lines(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def assert_each_step_once(records, total_steps, epochs, stage="train"):
    mine = [r for r in records if r.get("stage") == stage]
    assert [r["step"] for r in mine] == list(range(total_steps))  # strictly increasing, unique and complete
    epoch_records = [(r["epoch"], r["step"]) for r in mine if "time_s" in r]
    assert epoch_records == [(e, e * 6 - 1) for e in range(1, epochs + 1)]  # 1-based, at the epoch's last step


@pytest.mark.parametrize(("save_every_steps", "killed_at", "saved_at"), [(0, 15, 12), (4, 17, 16)])
def test_a_resumed_run_logs_each_step_once(faces, tmp_path, save_every_steps, killed_at, saved_at):  # noqa: F811
    cfg = {"save_every_steps": save_every_steps}
    with pytest.raises(Killed):
        run(faces, tmp_path, 4, step_fn=killing_at(killed_at), cfg=cfg)
    assert load_checkpoint(tmp_path / "checkpoint-last.pth")["step"] == saved_at - 12  # after 12 + step steps
    before = [r["step"] for r in lines(tmp_path)]
    assert before == list(range(killed_at))  # logged past the last checkpoint
    with open(tmp_path / "log.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"step": 15, "stage": "train", "lo')  # a write cut short by the kill
    with MetricLogger(tmp_path, tensorboard=False) as other:
        other.log({"stage": "stage1", "epoch": 9, "loss": 1.0}, step=10**6)  # not this stage's: kept
    run(faces, tmp_path, 4, cfg=cfg)
    records = lines(tmp_path)
    assert_each_step_once(records, 24, 4)
    assert [r["step"] for r in records if r.get("stage") == "stage1"] == [10**6]


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_over(faces, tmp_path):  # noqa: F811
    with pytest.raises(Killed):
        run(faces, tmp_path, 2, step_fn=killing_at(4))
    assert not (tmp_path / "checkpoint-last.pth").exists()
    run(faces, tmp_path, 2)
    assert_each_step_once(lines(tmp_path), 12, 2)


def test_drop_records_rewrites_the_file_and_keeps_appending(tmp_path):
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        for step in range(5):
            logger.log({"stage": "a", "v": step}, step=step)
        (tmp_path / "log.jsonl").open("a").write("not json\n")
        assert logger.drop_records(lambda r: r["step"] >= 3) == 2
        assert logger.drop_records(lambda r: False) == 0
        logger.log({"stage": "a", "v": 9}, step=3)
    text = (tmp_path / "log.jsonl").read_text().splitlines()
    assert text[3] == "not json" and [json.loads(t)["step"] for t in text[:3] + text[4:]] == [0, 1, 2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    quiet = MetricLogger(tmp_path / "other", tensorboard=False, rank=1)
    assert quiet.drop_records(lambda r: True) == 0
