"""``python -m ferfast.train demo``: the paper's ablation on synthetic faces, on this machine (:mod:`ferfast.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

_HELP = """\
Run SSFER's ablation end to end on synthetic faces, with nothing to download: generate the faces
(cached), pretrain a small MAE on the unlabeled pool, then train with 5% of the labels

  supervised from scratch | + MAE pretraining | + face-IoU Mixup | + FixMatch (the full method)

and the fully supervised ceiling (100% of the labels), and print accuracy, mean class accuracy and
wall time of each on the test split (identities unseen in training). Under 10 minutes per seed on
a 2-core CPU; --quick runs a tiny version in under a minute. Results: OUT/results.md and
OUT/results.json; each arm's checkpoints, logs and confusion matrix: OUT/seed<S>/<arm>/.

examples:
  python -m ferfast.train demo
  python -m ferfast.train demo --seeds 0,1 --out runs/demo
  python -m ferfast.train demo --quick
  python -m ferfast.train demo --set stage1.epochs=150 --set pretrain.epochs=20
"""


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"must be distinct non-negative integers, got {text!r}")
    return seeds


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``ferfast.train`` parser."""
    from ferfast.demo import ARMS

    parser = subparsers.add_parser(
        "demo",
        help="SSFER's ablation on synthetic faces, end to end (under 10 minutes on a 2-core CPU)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--data-dir", type=Path, help="where the synthetic faces are cached (default: OUT/faces)")
    parser.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated seeds, e.g. 0,1 (default: 0)")
    parser.add_argument("--quick", action="store_true", help="a tiny version of everything (under a minute)")
    parser.add_argument(
        "--labeled-fraction", type=_fraction, default=0.05, help="fraction of the training labels kept (default: 0.05)"
    )
    parser.add_argument(
        "--arms",
        default=",".join(a.key for a in ARMS),
        help=f"comma-separated subset of {','.join(a.key for a in ARMS)} (default: all)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--loader", choices=("auto", "dali", "torch"), default="auto", help="default: auto")
    parser.add_argument("--resume", action="store_true", help="continue a killed demo instead of starting afresh")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TrainConfig setting for every arm, e.g. stage1.epochs=150 (repeatable)",
    )
    parser.set_defaults(demo_parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo; bad options exit with status 2 naming the option."""
    from ferfast.config import ConfigError
    from ferfast.demo import DemoConfig, check_config, run_demo

    parser = args.demo_parser
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"argument --set: expected KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    try:
        cfg = DemoConfig(
            out_dir=args.out,
            data_dir=args.data_dir,
            seeds=args.seeds,
            quick=args.quick,
            labeled_fraction=args.labeled_fraction,
            device=args.device,
            loader=args.loader,
            resume=args.resume,
            arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()),
            overrides=overrides,
        )
    except ValueError as e:
        option = "--set" if str(e).startswith("overrides") else "--arms" if str(e).startswith("arms") else "--seeds"
        parser.error(f"argument {option}: {e}")
    try:
        check_config(cfg)
    except ConfigError as e:
        parser.error(f"argument --set: {e}")
    run_demo(cfg)
    return 0
