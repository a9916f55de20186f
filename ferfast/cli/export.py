"""``python -m ferfast.train export CHECKPOINT OUT_DIR``: a trained classifier as ONNX and/or a torch.export program.

A thin front of :func:`ferfast.export.export_model` (its docstring states the input contract): it writes
``OUT_DIR/model.onnx``, ``OUT_DIR/model.pt2`` and ``OUT_DIR/preprocessing.json``, and prints what it wrote, the
verification's largest logit difference from PyTorch and the input specification. Failures follow the table of
:mod:`ferfast.cli`: a missing checkpoint or an output that exists without ``--force`` exit 1, a checkpoint that is not
a classifier's (an MAE's) or a bad option exit 2. An exported model whose logits disagree with PyTorch's
(:class:`ferfast.export.ExportVerificationError`, a bug of the exporter or the runtime; nothing is written) is reported
as an internal error, with its traceback.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]

_HELP = """\
Export the classifier of a stage-1 or stage-2 checkpoint (its EMA weights) for deployment:

  OUT_DIR/model.onnx          ONNX (opset 18 by default), input `images`, output `logits`, dynamic batch
  OUT_DIR/model.pt2           the same as a torch.export program (torch.export.load(...).module())
  OUT_DIR/preprocessing.json  the input spec, class names, model name, source checkpoint, verification

By default the model takes RGB uint8 images [N, 3, S, S] (NCHW, values 0..255), already cropped to the face and
resized to the checkpoint's image size S, and normalises them itself; with --no-preprocessing it takes the
normalised float32 tensor ((x / 255 - mean) / std). The output is the logits [N, classes]: softmax gives the
probabilities. Before writing, the exported files are run (ONNX in onnxruntime, when installed) and compared with
the PyTorch model on random images; a mismatch writes nothing.

examples:
  python -m ferfast.train export runs/raf25/stage2/checkpoint-last.pth exported/
  python -m ferfast.train export runs/raf25/stage2/checkpoint-last.pth exported/ --format onnx --opset 20 --force
"""

_FORMATS = {"onnx": ("onnx",), "torch-export": ("torch_export",), "both": ("onnx", "torch_export")}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to the ``ferfast.train`` parser."""
    from ferfast.cli import positive_int

    parser = subparsers.add_parser(
        "export",
        help="export a trained classifier as ONNX and/or a torch.export program, with its input spec",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a stage-1 or stage-2 checkpoint (.pth)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write into (created)")
    parser.add_argument(
        "--format",
        choices=tuple(_FORMATS),
        default="both",
        dest="export_format",
        help="what to write: onnx (model.onnx), torch-export (model.pt2) or both (default)",
    )
    parser.add_argument(
        "--no-preprocessing",
        action="store_true",
        help="the model takes normalised float32 images instead of RGB pixels 0..255 (normalisation left to you)",
    )
    parser.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default=None,
        help="dtype of the pixels with the built-in preprocessing (default: uint8; float32 takes values 0..255)",
    )
    parser.add_argument("--opset", type=positive_int, default=None, help="ONNX opset, >= 18 (default: 18)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA weights")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not run the exported files to compare them with PyTorch (faster; not recommended)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Export, then print the files, the verification and the input spec; returns 0."""
    from ferfast.export import DEFAULT_OPSET, export_model

    if args.no_preprocessing and args.input_dtype == "uint8":
        raise ValueError("--input-dtype uint8 needs the built-in preprocessing (drop --no-preprocessing)")
    result = export_model(
        args.checkpoint,
        args.out_dir,
        formats=_FORMATS[args.export_format],
        include_preprocessing=not args.no_preprocessing,
        input_dtype=args.input_dtype,
        opset=DEFAULT_OPSET if args.opset is None else args.opset,
        ema=not args.no_ema,
        overwrite=args.force,
        verify=not args.no_verify,
    )
    print(format_result(result))
    return 0


def format_result(result: Any) -> str:
    """The lines ``export`` prints for an :class:`ferfast.export.ExportResult`."""
    spec = result.spec
    lines = []
    labels = {"onnx": f"ONNX, opset {spec['onnx_opset']}", "torch_export": "torch.export program"}
    for fmt, path in result.files.items():
        if fmt == "spec":
            continue
        size = path.stat().st_size / 2**20
        if fmt in result.max_abs_diff:
            runtime = spec["verification"][fmt].get("runtime") or "torch.export.load"
            batches = " and ".join(map(str, spec["verification"][fmt]["batch_sizes"]))
            check = f"run in {runtime}: max |logit - PyTorch's| {result.max_abs_diff[fmt]:.2g} (batches of {batches})"
        else:
            check = f"not verified: {result.not_verified.get(fmt, '?')}"
        lines.append(f"wrote {path} ({labels[fmt]}, {size:.1f} MiB); {check}")
    lines.append(f"wrote {result.files['spec']} (input spec, class names, source)")
    inp, out = spec["input"], spec["output"]
    shape = "[" + ", ".join(map(str, inp["shape"])) + "]"
    h, w = spec["image_size"]
    if inp["normalized_in_model"]:
        what = f"RGB pixels 0..255 {inp['layout']}, face crops resized to {h}x{w}; normalised inside the model"
    else:
        what = (
            f"RGB {inp['layout']} face crops resized to {h}x{w}, normalised: (x / 255 - mean) / std, "
            f"mean {spec['preprocessing']['mean']}, std {spec['preprocessing']['std']}"
        )
    lines.append(f"input:  {inp['name']} {inp['dtype']} {shape}: {what}")
    names = ", ".join(spec["class_names"])
    lines.append(
        f"output: {out['name']} {out['dtype']} [{', '.join(map(str, out['shape']))}] ({names}); "
        "softmax gives the probabilities"
    )
    return "\n".join(lines)
