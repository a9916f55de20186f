"""``python -m ferfast.train list-models``: the model names ``--model.name`` accepts, with their sizes.

One naming rule for every stage: ``--model.name`` names an encoder family, given as the classifier's name
(``vit_demo``) or the MAE's (``mae_vit_demo``), which mean the same architecture; ``pretrain`` builds its
MAE, ``finetune``/``semisup``/``evaluate`` its classifier (:func:`ferfast.models.resolve_model_names`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from ferfast.cli import positive_int

__all__ = ["add_parser", "format_table", "run"]

_HELP = """\
List the model names --model.name accepts: each row is one architecture, which either name selects
(pretrain builds the MAE, finetune/semisup/evaluate the classifier). Sizes: encoder width (dim),
depth and heads, patch and default image size (--data.image_size must be a multiple of the patch),
the MAE decoder (dim/depth/heads), and parameters in millions (the classifier's with --num-classes
classes, and the MAE's).

examples:
  python -m ferfast.train list-models
  python -m ferfast.train pretrain --model.name mae_vit_demo --data.image_size 64 ...
  python -m ferfast.train finetune --model.name vit_demo --data.image_size 64 ...
"""

_COLUMNS = ("name", "MAE name", "dim", "depth", "heads", "patch", "img", "decoder", "params M", "MAE M", "source")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``list-models`` to the ``ferfast.train`` parser."""
    parser = subparsers.add_parser(
        "list-models",
        help="the model names --model.name accepts (classifier and MAE), with sizes and origin",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--num-classes",
        type=positive_int,
        default=7,
        help="classes of the classifier whose parameters are counted (default: 7, RAF-DB's)",
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON lines, one model a line")
    return parser


def format_table(rows: list[Any], num_classes: int = 7) -> str:
    """The rows of :func:`ferfast.models.model_table` as an aligned text table with a header and a footnote."""
    cells = [_COLUMNS] + [
        (
            r.name,
            r.mae_name,
            str(r.embed_dim),
            str(r.depth),
            str(r.num_heads),
            str(r.patch_size),
            str(r.img_size),
            "/".join(map(str, r.decoder)),
            f"{r.params_m:.2f}",
            f"{r.mae_params_m:.2f}",
            r.source,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"\nparams M: the classifier's, with {num_classes} classes; MAE M: the MAE's (encoder and decoder). "
        "Either name of a row selects that architecture for every command."
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON lines); returns 0."""
    from ferfast.models import model_table

    rows = model_table(num_classes=args.num_classes)
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r)))
    else:
        print(format_table(rows, args.num_classes))
    return 0
