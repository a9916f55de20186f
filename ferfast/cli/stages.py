"""``pretrain``, ``finetune``, ``semisup`` and ``evaluate``: the pipeline's stages from the command line.

Every setting of :class:`ferfast.config.TrainConfig` is an option ``--section.field VALUE`` (the
defaults are SSFER's recipes); ``--config FILE`` (YAML or TOML) sets many at once and the options
given win. A bad value exits with status 2 and a message naming the option.
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


def add_parsers(subparsers: Any) -> None:
    """Add the four stage commands to the ``ferfast.train`` parser."""
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


def _run(args: argparse.Namespace) -> int:
    from ferfast import api

    parser = args.stage_parser
    if args.stage_command == "evaluate":
        from pathlib import Path

        from ferfast.config import config_from_dict
        from ferfast.engine.checkpoint import load_checkpoint

        try:
            saved = {k: v for k, v in (load_checkpoint(args.checkpoint).get("args") or {}).items() if k != "stage"}
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"argument checkpoint: {e}")
        base = config_from_dict(TrainConfig, saved)
        cfg = config_from_args(TrainConfig, args, parser, data=base.data, model=base.model, run=base.run)
        out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
        result = api.evaluate(args.checkpoint, cfg, out)
        print(json.dumps({k: result[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")}, indent=2))
        print(f"metrics and confusion matrix written to {out}")
        return 0
    cfg = config_from_args(TrainConfig, args, parser)
    if args.stage_command == "pretrain":
        print(f"pretrained encoder: {api.pretrain(cfg)}")
        return 0
    stages = ("stage1",) if args.stage_command == "finetune" else ("stage2",)
    result = api.finetune(cfg, stages=stages)
    m = result["metrics"]
    print(f"{stages[0]}: accuracy {m['accuracy']:.4f}, mean class accuracy {m['mean_class_accuracy']:.4f}, "
          f"macro-F1 {m['macro_f1']:.4f}; checkpoint {result['checkpoint']}")  # fmt: skip
    return 0
