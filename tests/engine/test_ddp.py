"""Stage 1 under DDP: two gloo processes with 4 images each train like one process with 8 (CPU, tiny ViT).

Mixup is off and the augmentation is deterministic (whole image, no flip), so the only difference between the
runs is the sharding: rank r sees the positions r, r + 2, ... of the epoch's permutation that one process walks
through in order. The gradients then differ only by the order of fp32 sums (the all-reduce), ~1e-7 relative.
AdamW divides by the gradients' RMS, so a gradient that is 0 in exact arithmetic (the attention's key bias: the
softmax ignores a shift) turns that noise into steps of ~lr; a small lr and eps 1e-6 keep the runs within 1e-7.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ferfast.config import TrainConfig, build_config
from ferfast.engine import load_checkpoint
from ferfast.engine.dist import distributed
from ferfast.engine.evaluation import evaluate
from ferfast.engine.loop import RANK_RNG_KEY
from ferfast.engine.stage_data import prepare_data
from ferfast.engine.stages import build_classifier, run_stage1
from tests.engine.test_dist import free_port
from tests.utils import write_tiny_faces

WORLD = 2


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_tiny_faces(tmp_path_factory.mktemp("synth"), num_unlabeled=8, num_unlabeled_identities=1)


def config(synth: Path, out: Path, batch_size: int, epochs: int = 2, accum_steps: int = 1) -> TrainConfig:
    """Stage 1 without randomness inside the step: no Mixup, no drop path, whole images, fixed lr."""
    return build_config(
        TrainConfig,
        overrides={
            "data.root": str(synth),
            "data.format": "synthetic",
            "data.image_size": 32,
            "data.loader": "torch",
            "data.num_workers": 0,
            "data.labeled_fraction": 0.5,
            "data.scale": "1,1",
            "data.ratio": "1,1",
            "data.flip_prob": 0.0,
            "model.name": "vit_demo",
            "model.drop_path": 0.0,
            "run.output_dir": str(out),
            "run.device": "cpu",
            "run.tensorboard": False,
            "run.log_every": 1,
            "run.precision": "fp32",
            "stage1.epochs": epochs,
            "stage1.batch_size": batch_size,
            "stage1.mixup": False,
            "stage1.ema_decay": 0.0,  # the EMA is then the trained weights themselves (lerp with weight 1 is exact)
            "stage1.optim.lr": 1e-4,
            "stage1.optim.eps": 1e-6,
            "stage1.optim.warmup_epochs": 0,
            "stage1.optim.schedule": "constant",
            "stage1.optim.accum_steps": accum_steps,
        },
    )


def _worker(rank: int, synth: str, out: str, reference: str, port: int) -> None:
    """One torchrun-like process: train (also with accumulation), resume a run killed after one epoch, evaluate
    fixed weights sharded."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # two processes on two cores
    synth_dir, out_dir = Path(synth), Path(out)
    with distributed(backend="gloo"):
        cfg = config(synth_dir, out_dir / "ddp", batch_size=4)
        data = prepare_data(cfg)
        ema = run_stage1(cfg, data)
        killed = config(synth_dir, out_dir / "killed", batch_size=4, epochs=1)
        run_stage1(killed, prepare_data(killed))
        resumed = run_stage1(config(synth_dir, out_dir / "killed", batch_size=4), data)
        accumulated = run_stage1(config(synth_dir, out_dir / "accum", batch_size=1, accum_steps=2), data)
        model = build_classifier(cfg, len(data.class_names))
        model.load_state_dict(load_checkpoint(reference)["ema"])
        metrics = evaluate(model, data.test, cfg)
    torch.save(
        {
            "ema": ema.state_dict(),
            "resumed": resumed.state_dict(),
            "accumulated": accumulated.state_dict(),
            "labeled": list(data.split.labeled),
            "confusion": metrics["confusion"],
        },
        out_dir / f"rank{rank}.pt",
    )


def records(path: Path) -> tuple[list[dict], list[dict]]:
    """The per-step and per-epoch records of a JSON-lines log."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if "time_s" not in r], [r for r in lines if "time_s" in r]


def test_two_ranks_with_4_images_train_like_one_process_with_8(synth, tmp_path):
    single_cfg = config(synth, tmp_path / "single", batch_size=8)
    data = prepare_data(single_cfg)
    single = run_stage1(single_cfg, data).state_dict()
    # 2 ranks x 1 image x 2 accumulated micro-batches = 4 images per optimizer step (the same 4 as one process's)
    single_4 = run_stage1(config(synth, tmp_path / "single4", batch_size=4), data).state_dict()
    reference = tmp_path / "single" / "stage1" / "checkpoint-last.pth"
    mp.spawn(_worker, args=(str(synth), str(tmp_path), str(reference), free_port()), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    torch.manual_seed(single_cfg.run.seed)
    init = build_classifier(single_cfg, len(data.class_names)).state_dict()
    assert not torch.allclose(single["head.weight"], init["head.weight"])  # it trained
    for r in ranks:
        assert r["labeled"] == list(data.split.labeled)  # every rank read the split rank 0 wrote
        for name, value in ranks[0]["ema"].items():
            assert torch.equal(r["ema"][name], value), name  # DDP keeps the ranks bit-identical
            assert torch.equal(r["resumed"][name], value), name  # a killed run resumes exactly, on every rank
    for name, value in single.items():
        torch.testing.assert_close(ranks[0]["ema"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(ranks[0]["accumulated"][name], single_4[name], rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(ranks[1]["accumulated"][name], ranks[0]["accumulated"][name]), name

    steps, epochs = records(tmp_path / "ddp" / "stage1" / "log.jsonl")
    ref_steps, ref_epochs = records(tmp_path / "single" / "stage1" / "log.jsonl")
    assert len(steps) == len(ref_steps) == 2 * 2  # only rank 0 logs: 3 steps of 8 images per epoch (28 labeled),
    # the last one in the epoch record
    losses = torch.tensor([r["loss"] for r in steps], dtype=torch.float64)
    torch.testing.assert_close(
        losses, torch.tensor([r["loss"] for r in ref_steps], dtype=torch.float64), rtol=1e-5, atol=0
    )  # the global batch's loss, averaged over the ranks
    assert [r["val_accuracy"] for r in epochs] == [r["val_accuracy"] for r in ref_epochs]

    ckpt = load_checkpoint(tmp_path / "ddp" / "stage1" / "checkpoint-last.pth")
    assert ckpt["epoch"] == 1 and len(ckpt[RANK_RNG_KEY]) == WORLD
    model = build_classifier(single_cfg, len(data.class_names))
    model.load_state_dict(load_checkpoint(reference)["ema"])
    expected = evaluate(model, data.test, single_cfg)["confusion"]
    assert all(r["confusion"] == expected for r in ranks)  # 21 images sharded over 2 ranks (one padded), gathered
