"""``pretrain``, ``finetune``, ``semisup``, ``evaluate`` and ``predict``: the pipeline from the command line.

Every setting of :class:`ferfast.config.TrainConfig` is an option ``--section.field VALUE`` (the
defaults are SSFER's recipes); ``--config FILE`` (YAML or TOML) sets many at once and the options
given win. A bad value exits with status 2 and a message naming the option.

``torchrun --nproc_per_node N -m ferfast.train COMMAND ...`` runs a command with N processes (DDP; NCCL on GPU,
gloo on CPU): the command joins the process group and leaves it at the end, and only rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ferfast.config import TrainConfig, add_config_arguments, config_from_args

__all__ = ["COMMAND_HELP", "add_parsers"]

#: command -> (its help line, the config sections it reads, what it runs)
COMMAND_HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    "pretrain": ("MAE face-reconstruction pretraining on unlabeled faces", ("data", "model", "run", "pretrain")),
    "finetune": ("stage 1: supervised fine-tuning with face-IoU Mixup on the labeled fraction",
                 ("data", "model", "run", "stage1")),
    "semisup": ("stage 2: FixMatch with an EMA teacher, from stage 1's checkpoint in run.output_dir",
                ("data", "model", "run", "stage1", "stage2")),
    "evaluate": ("accuracy, mean class accuracy, macro-F1 and confusion matrix of a checkpoint",
                 ("data", "model", "run")),
}  # fmt: skip

_EXAMPLES = {
    "pretrain": "python -m ferfast.train pretrain --data.unlabeled_root /data/ms1m --run.output_dir runs/mae",
    "finetune": "python -m ferfast.train finetune --data.root /data/RAF-DB/basic --data.labeled_fraction 0.25 "
    "--model.pretrained runs/mae/pretrain/checkpoint-last.pth --run.output_dir runs/raf25",
    "semisup": "python -m ferfast.train semisup --data.root /data/RAF-DB/basic --data.labeled_fraction 0.25 "
    "--run.output_dir runs/raf25",
    "evaluate": "python -m ferfast.train evaluate runs/raf25/stage2/checkpoint-last.pth",
}


def _add_predict(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict", help="classify the expression of the face in image files or photos",
        description="Classify the expression of the face in each image: the largest face is found with OpenCV's "
        "face detector and cropped with a margin (the whole image when none is found, or with --no-detect for "
        "aligned crops), then classified by a stage-1 or stage-2 checkpoint.\n\nexample:\n  python -m "
        "ferfast.train predict runs/raf25/stage2/checkpoint-last.pth photo.jpg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("checkpoint", help="a stage-1 or stage-2 checkpoint")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--no-detect", action="store_true", help="use the whole image (aligned face crops)")
    parser.add_argument("--margin", type=float, default=0.2, help="face crop margin, a fraction of the box (0.2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(command_run=_run_predict, stage_parser=parser)


def _run_predict(args: argparse.Namespace) -> int:
    from ferfast import api

    parser = args.stage_parser
    if not 0.0 <= args.margin <= 1.0:
        parser.error(f"argument --margin: must be in [0, 1], got {args.margin}")
    try:
        results = api.predict(args.checkpoint, args.images, detect=not args.no_detect, margin=args.margin)
    except (FileNotFoundError, ValueError, OSError) as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:3]
        face = "face found" if r["box"] is not None else "whole image"
        print(f"{r['file']}: {r['label']} ({face}; " + ", ".join(f"{n} {p:.2f}" for n, p in top) + ")")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add the stage commands and ``predict`` to the ``ferfast.train`` parser."""
    for name, (help_line, sections) in COMMAND_HELP.items():
        parser = subparsers.add_parser(
            name, help=help_line, description=f"{help_line}.\n\nexample:\n  {_EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter, usage=f"python -m ferfast.train {name} [options]",
        )  # fmt: skip
        if name == "evaluate":
            parser.add_argument("checkpoint", help="a stage-1 or stage-2 checkpoint (its config is the base)")
            parser.add_argument("--out", help="folder for metrics.json and confusion.png (default: next to it)")
        add_config_arguments(parser, TrainConfig, sections=sections)
        parser.set_defaults(command_run=_run, stage_command=name, stage_parser=parser)
    _add_predict(subparsers)


def _run(args: argparse.Namespace) -> int:
    from ferfast.engine.dist import distributed

    with distributed():
        return _run_stage_command(args)


def _say(text: str) -> None:
    """Print on rank 0 only (every rank runs the command)."""
    from ferfast.engine.dist import is_main_process

    if is_main_process():
        print(text)


def _run_stage_command(args: argparse.Namespace) -> int:
    from ferfast import api

    parser = args.stage_parser
    if args.stage_command == "evaluate":
        from pathlib import Path

        try:
            model, _, base = api.load_trained(args.checkpoint)
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"argument checkpoint: {e}")
        cfg = config_from_args(TrainConfig, args, parser, data=base.data, model=base.model, run=base.run)
        out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
        result = api.evaluate(model, cfg, out)
        _say(json.dumps({k: result[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")}, indent=2))
        _say(f"metrics and confusion matrix written to {out}")
        return 0
    cfg = config_from_args(TrainConfig, args, parser)
    if args.stage_command == "pretrain":
        _say(f"pretrained encoder: {api.pretrain(cfg)}")
        return 0
    stages = ("stage1",) if args.stage_command == "finetune" else ("stage2",)
    result = api.finetune(cfg, stages=stages)
    m = result["metrics"]
    _say(f"{stages[0]}: accuracy {m['accuracy']:.4f}, mean class accuracy {m['mean_class_accuracy']:.4f}, "
         f"macro-F1 {m['macro_f1']:.4f}; checkpoint {result['checkpoint']}")  # fmt: skip
    return 0
