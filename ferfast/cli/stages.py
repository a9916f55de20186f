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
import textwrap
from typing import Any

from ferfast.config import TrainConfig, add_config_arguments, config_from_args

__all__ = ["COMMAND_HELP", "add_parsers"]

#: command -> (its help line, the config sections it reads)
COMMAND_HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    "pretrain": ("MAE face-reconstruction pretraining on unlabeled faces", ("data", "model", "run", "pretrain")),
    "finetune": (
        "stage 1: supervised fine-tuning with face-IoU Mixup on the labeled fraction, from a pretrained encoder",
        ("data", "model", "run", "stage1"),
    ),
    "semisup": (
        "stage 2: FixMatch with an EMA teacher, from stage 1's checkpoint in run.output_dir (its settings "
        "carried over)",
        ("data", "model", "run", "stage2"),
    ),
    "evaluate": ("accuracy, mean class accuracy, macro-F1 and confusion matrix of a checkpoint", ("data", "run")),
}

#: the settings evaluate uses besides the checkpoint's own (model, image size, classes): where the test images are,
#: how they are loaded, and the device
EVALUATE_KEYS = (
    "data.root",
    "data.format",
    "data.test_split",
    "data.loader",
    "data.dali_device",
    "data.num_workers",
    "run.device",
)

_EXAMPLES = {
    "pretrain": "python -m ferfast.train pretrain --data.unlabeled_root /data/ms1m --run.output_dir runs/mae",
    "finetune": "python -m ferfast.train finetune --data.root /data/RAF-DB/basic --data.labeled_fraction 0.25 "
    "--model.pretrained runs/mae/pretrain/checkpoint-last.pth --run.output_dir runs/raf25",
    "semisup": "python -m ferfast.train semisup --data.root /data/RAF-DB/basic --run.output_dir runs/raf25",
    "evaluate": "python -m ferfast.train evaluate runs/raf25/stage2/checkpoint-last.pth",
}

_NOTES = {
    "pretrain": "Pretrains on data.unlabeled_root; without it on data.root's unlabeled/ folder when it has one "
    "(`data synth` writes one), else on data.root's training images. Writes RUN/pretrain/.",
    "finetune": "Takes the model and image size from a ferfast pretraining checkpoint (--model.pretrained); the "
    "label split is drawn once (data.labeled_fraction, data.seed) and kept in RUN/split.json for stage 2. "
    "Writes RUN/stage1/.",
    "semisup": "Starts from RUN/stage1/checkpoint-last.pth and takes its model, image size, dataset and label "
    "split (an option that contradicts them is an error naming both values). Writes RUN/stage2/.",
    "evaluate": "The model, image size and classes come from the checkpoint; the test images from the options, "
    "else from the checkpoint's own settings.",
}

_RESUME_NOTE = (
    'A stage continues from its folder\'s last checkpoint (a killed run), says "already finished" when '
    "it is complete, and refuses a folder another run is using; --fresh starts it over."
)


def _add_predict(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify the expression of the face in image files, folders or globs",
        description="Classify the expression of the face in each image: the largest face is found with OpenCV's "
        "face detector and cropped with a margin (the whole image when none is found, or with --no-detect for "
        "aligned crops), then classified by a stage-1 or stage-2 checkpoint (its class names and image size).\n\n"
        "INPUT is a file, a folder (searched recursively for .jpg .jpeg .png .bmp .webp .tif .tiff, any case, "
        "sorted) or a glob pattern (expanded here too, quote it: 'photos/**/*.jpg').\n\n"
        "output: a table on stdout by default (path, label, probability, face box or 'whole image', the other "
        "top-k classes); --format jsonl or csv, or --output FILE (format from its extension: .jsonl/.json -> "
        "JSON lines, .csv -> CSV, else --format). Each row has path, topk ([class, probability] pairs), box "
        "(relative x1 y1 x2 y2, or none for the whole image) and error (for a file that cannot be read or "
        "decoded: the others are still classified).\n\n"
        "exit status: 0 when every image was classified; 1 when some could not be read (their rows say why), "
        "an input names no image, or the checkpoint is missing or damaged; 2 for a usage error (a bad option, a "
        "checkpoint that is not a stage-1 or stage-2 classifier's).\n\n"
        "example:\n  python -m ferfast.train predict runs/raf25/stage2/checkpoint-last.pth photos/ --topk 3 "
        "--output predictions.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="a stage-1 or stage-2 checkpoint")
    parser.add_argument("images", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--no-detect", action="store_true", help="use the whole image (aligned face crops)")
    parser.add_argument("--margin", type=float, default=0.2, help="face crop margin, a fraction of the box (0.2)")
    parser.add_argument("--topk", type=int, default=1, metavar="K", help="the K most likely classes per image (1)")
    parser.add_argument("--batch-size", type=int, default=32, help="images classified at once (32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument(
        "--format", choices=_PREDICT_FORMATS, default=None, help="table (default on stdout), jsonl (JSON lines) or csv"
    )
    parser.add_argument("--output", metavar="FILE", default=None, help="write the rows to FILE instead of stdout")
    parser.add_argument("--json", action="store_true", help="same as --format jsonl")
    parser.set_defaults(command_run=_run_predict, stage_parser=parser)


_PREDICT_FORMATS = ("table", "jsonl", "csv")
_FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def _predict_format(args: argparse.Namespace) -> str:
    """--format, else --json, else the --output file's extension, else a table."""
    if args.format is not None:
        return args.format
    if args.json:
        return "jsonl"
    if args.output is not None:
        from pathlib import Path

        return _FORMAT_BY_SUFFIX.get(Path(args.output).suffix.lower(), "table")
    return "table"


def _prediction_row(r: dict[str, Any]) -> dict[str, Any]:
    """A row of the JSON lines output."""
    return {
        "path": r["path"],
        "label": r["label"],
        "probability": r["probability"],
        "topk": r["topk"],
        "box": r["box"],
        "error": r["error"],
    }


def format_predictions(results: list[dict[str, Any]], fmt: str, topk: int) -> str:
    """``ferfast.predict``'s rows as text: ``table``, ``jsonl`` or ``csv``.

    CSV columns: path, label, probability, class_2, probability_2, ... up to ``topk``, box (``x1 y1 x2 y2``
    relative, empty for the whole image), error (empty when classified).
    """
    if fmt == "jsonl":
        return "".join(json.dumps(_prediction_row(r)) + "\n" for r in results)
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        extra = [c for i in range(2, topk + 1) for c in (f"class_{i}", f"probability_{i}")]
        writer.writerow(["path", "label", "probability", *extra, "box", "error"])
        for r in results:
            pairs = [v for name, p in r["topk"][1:] for v in (name, f"{p:.6f}")]
            pairs += [""] * (len(extra) - len(pairs))
            box = "" if r["box"] is None else " ".join(f"{v:.4f}" for v in r["box"])
            prob = "" if r["probability"] is None else f"{r['probability']:.6f}"
            writer.writerow([r["path"], r["label"] or "", prob, *pairs, box, r["error"] or ""])
        return buffer.getvalue()
    lines = []
    for r in results:
        if r["error"] is not None:
            lines.append(f"{r['path']}: error: {r['error']}")
            continue
        face = "whole image" if r["box"] is None else "face " + " ".join(f"{v:.2f}" for v in r["box"])
        others = "".join(f", {n} {p:.2f}" for n, p in r["topk"][1:])
        lines.append(f"{r['path']}: {r['label']} {r['probability']:.2f} ({face}{others})")
    return "".join(line + "\n" for line in lines)


def _run_predict(args: argparse.Namespace) -> int:
    import sys

    from ferfast import api

    parser = args.stage_parser
    if not 0.0 <= args.margin <= 1.0:
        parser.error(f"argument --margin: must be in [0, 1], got {args.margin}")
    if args.topk < 1:
        parser.error(f"argument --topk: must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        parser.error(f"argument --batch-size: must be at least 1, got {args.batch_size}")
    fmt = _predict_format(args)
    files = api.expand_images(args.images)  # FileNotFoundError naming the input: a runtime failure, exit 1
    try:
        model, class_names, saved = api.load_trained(args.checkpoint)
    except ValueError as e:  # not a classifier checkpoint; a missing or damaged one is a runtime failure (exit 1)
        from ferfast.models.checkpoint import CheckpointError

        if isinstance(e, CheckpointError):
            raise
        parser.error(f"argument checkpoint: {e}")
    try:
        results = api.predict(
            model,
            files,
            detect=not args.no_detect,
            margin=args.margin,
            image_size=saved.data.image_size,
            class_names=class_names,
            topk=args.topk,
            batch_size=args.batch_size,
            device=args.device,
        )
    except RuntimeError as e:  # a bad --device
        if args.device is None:
            raise
        parser.error(f"argument --device: {e}")
    text = format_predictions(results, fmt, args.topk)
    if args.output is None:
        sys.stdout.write(text)
    else:
        from pathlib import Path

        Path(args.output).write_text(text, encoding="utf-8")
    failed = [r for r in results if r["error"] is not None]
    if failed:
        print(f"predict: {len(failed)} of {len(results)} images could not be read (see their rows)", file=sys.stderr)
    return 1 if failed else 0


def add_parsers(subparsers: Any) -> None:
    """Add the stage commands and ``predict`` to the ``ferfast.train`` parser."""
    for name, (help_line, sections) in COMMAND_HELP.items():
        notes = textwrap.fill(_NOTES[name] + ("" if name == "evaluate" else " " + _RESUME_NOTE), 100)
        parser = subparsers.add_parser(
            name,
            help=help_line,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"{help_line}.\n\n{notes}\n\nexample:\n  {_EXAMPLES[name]}",
            usage=f"python -m ferfast.train {name} {'CHECKPOINT ' if name == 'evaluate' else ''}[options]",
        )
        if name == "evaluate":
            parser.add_argument("checkpoint", help="a stage-1 or stage-2 checkpoint (its config is the base)")
            parser.add_argument("--out", help="folder for metrics.json and confusion.png (default: next to it)")
            add_config_arguments(parser, TrainConfig, sections=sections, keys=EVALUATE_KEYS)
        else:
            parser.add_argument(
                "--fresh",
                action="store_true",
                help="start the stage over: its old folder is moved into RUN/previous-<time>/",
            )
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
        except FileNotFoundError:
            raise
        except ValueError as e:  # not a classifier checkpoint (a damaged one is a CheckpointError: runtime)
            from ferfast.models.checkpoint import CheckpointError

            if isinstance(e, CheckpointError):
                raise
            parser.error(f"argument checkpoint: {e}")
        cfg = config_from_args(TrainConfig, args, parser, base=base)  # the checkpoint's settings < --config < options
        out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
        result = api.evaluate(model, cfg, out)
        _say(json.dumps({k: result[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")}, indent=2))
        _say(f"metrics and confusion matrix written to {out}")
        return 0
    cfg = config_from_args(TrainConfig, args, parser)
    if args.stage_command == "pretrain":
        _say(f"pretrain: encoder checkpoint {api.pretrain(cfg, fresh=args.fresh)}")
        return 0
    stages = ("stage1",) if args.stage_command == "finetune" else ("stage2",)
    result = api.finetune(cfg, stages=stages, fresh=args.fresh)
    m = result["metrics"]
    _say(
        f"{stages[0]}: test accuracy {m['accuracy']:.4f}, mean class accuracy {m['mean_class_accuracy']:.4f}, "
        f"macro-F1 {m['macro_f1']:.4f}; checkpoint {result['checkpoint']}"
    )
    return 0
