"""Export a trained classifier for deployment: an ONNX model and/or a ``torch.export`` program (``.pt2``).

:func:`export_model` reads a stage-1 or stage-2 checkpoint (its EMA weights by default) and writes into a folder:

- ``model.onnx``: an ONNX model (opset :data:`DEFAULT_OPSET`, built with torch's dynamo exporter, which needs the
  ``onnx`` and ``onnxscript`` packages), input ``images``, output ``logits``, a dynamic batch axis;
- ``model.pt2``: the same function as a :func:`torch.export.export` program, saved with :func:`torch.export.save`
  (load it with :func:`torch.export.load`, call ``.module()(images)``);
- ``preprocessing.json``: the input specification (image size, layout, dtype, mean, std, what the model does and
  what the caller must do), the class names, the model name, the source checkpoint and the verification result.
  It is written last: a folder with this file holds a complete export.

Input contract. With ``include_preprocessing=True`` (the default) the exported function takes RGB images
``[N, 3, S, S]`` (NCHW) with pixel values 0..255, as ``uint8`` (default) or ``float32`` (``input_dtype``), already
cropped to the face and resized to the checkpoint's ``S = data.image_size`` (:func:`ferfast.predict` resizes with
bicubic interpolation and antialiasing), and normalises them inside the graph, ``(x / 255 - mean) / std`` with
:data:`ferfast.data.FACE_MEAN` / :data:`~ferfast.data.FACE_STD`. With ``include_preprocessing=False`` it takes the
normalised ``float32`` tensor the PyTorch classifier takes. Either way the output is the ``float32`` logits
``[N, num_classes]`` in the order of the class names (softmax gives the probabilities). Resizing and face cropping
stay outside the graph: they depend on the source image's size.

Every export is checked before anything is written: the serialised ONNX model is run in onnxruntime (when it is
installed; else only ``onnx.checker`` runs, and the result says so) and the serialised program is loaded back and
run, on random images of batch sizes 1 and 3, and compared with the PyTorch classifier applied to the same images
normalised as :func:`ferfast.predict` does; a difference above the tolerance raises
:class:`ExportVerificationError` and leaves the folder as it was. Each file is written atomically
(:func:`ferfast._io.write_atomic`); an existing file is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "INPUT_NAME",
    "ONNX_FILE",
    "OUTPUT_NAME",
    "PT2_FILE",
    "SPEC_FILE",
    "VERIFY_BATCH_SIZES",
    "ExportResult",
    "ExportVerificationError",
    "PixelNormalizedClassifier",
    "export_model",
]

#: What :func:`export_model` writes: ``onnx`` (``model.onnx``) and ``torch_export`` (``model.pt2``).
FORMATS: tuple[str, ...] = ("onnx", "torch_export")
#: The ONNX opset written by default: torch's dynamo exporter's own opset (no version conversion), run by
#: onnxruntime >= 1.14 and most other ONNX runtimes.
DEFAULT_OPSET = 18
#: The lowest opset torch's dynamo exporter writes.
MIN_OPSET = 18
#: File names inside the output folder.
ONNX_FILE, PT2_FILE, SPEC_FILE = "model.onnx", "model.pt2", "preprocessing.json"
#: The names of the exported function's input and output (ONNX graph names, ``preprocessing.json`` keys).
INPUT_NAME, OUTPUT_NAME = "images", "logits"
#: The batch sizes the verification runs (two, to exercise the dynamic batch axis).
VERIFY_BATCH_SIZES: tuple[int, ...] = (1, 3)
#: The default verification tolerance: ``max |exported - pytorch| <= rtol * max(1, max |pytorch logit|)``.
DEFAULT_RTOL = 1e-3
#: Version of the ``preprocessing.json`` layout.
SPEC_VERSION = 1
#: The key of the specification in the ONNX model's ``metadata_props`` and in the ``.pt2`` archive's extra files.
METADATA_KEY = "ferfast.spec"

_FILES = {"onnx": ONNX_FILE, "torch_export": PT2_FILE}
_INPUT_DTYPES = ("uint8", "float32")
_TRACE_BATCH = 2  # the example batch the graphs are traced with (neither 1 nor a verified size)


class ExportVerificationError(RuntimeError):
    """An exported model whose logits differ from the PyTorch classifier's by more than the tolerance
    (an exporter or runtime bug: nothing was written)."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and measured.

    ``files``: format (``onnx``, ``torch_export``, ``spec``) -> path written. ``max_abs_diff``: format -> the largest
    absolute difference of the exported model's logits from the PyTorch classifier's over the verification batches
    (absent for a format not run). ``not_verified``: format -> why it was not run (verification off, onnxruntime not
    installed). ``spec``: the content of ``preprocessing.json``.
    """

    files: dict[str, Path]
    spec: dict[str, Any]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    not_verified: dict[str, str] = field(default_factory=dict)


class PixelNormalizedClassifier(nn.Module):
    """``model`` behind the normalisation of :func:`ferfast.predict`: RGB pixels 0..255 ``[N, 3, H, W]`` -> logits.

    The pixels (uint8 or float) are cast to float32 and normalised as ``x * (1 / (255 std)) - mean / std``, the
    training loaders' :func:`ferfast.data.normalize_images`, so that the normalisation is part of the exported graph.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have one entry a channel and std > 0, got {mean} and {std}")
        shape = (1, len(mean), 1, 1)
        self.model = model
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(shape))
        self.register_buffer("shift", torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32).view(shape))

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.to(torch.float32) * self.scale - self.shift)


def export_model(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMATS,
    include_preprocessing: bool = True,
    input_dtype: str | None = None,
    opset: int = DEFAULT_OPSET,
    ema: bool = True,
    overwrite: bool = False,
    verify: bool = True,
    rtol: float = DEFAULT_RTOL,
) -> ExportResult:
    """Export the classifier of ``checkpoint`` (stage 1 or 2) into the folder ``out``; see the module docstring.

    ``formats``: a non-empty subset of :data:`FORMATS`. ``include_preprocessing``: the graph takes RGB pixels 0..255
    and normalises them (else it takes normalised float32). ``input_dtype``: ``"uint8"`` (the default with
    preprocessing) or ``"float32"`` (the only one without). ``opset``: the ONNX opset (>= 18). ``ema``: export the
    EMA weights when the checkpoint has them. ``verify``: run the exported files and compare them with PyTorch
    (``rtol``: see :data:`DEFAULT_RTOL`).

    Raises FileNotFoundError (no checkpoint), FileExistsError naming an output that exists (without ``overwrite``),
    ValueError for a bad argument, a checkpoint that is not a classifier's, or the ONNX format without the ``onnx``
    and ``onnxscript`` packages, and :class:`ExportVerificationError` when an exported model disagrees with PyTorch.
    """
    formats = _check_formats(formats)
    dtype_name = _check_input_dtype(input_dtype, include_preprocessing)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET} (torch's dynamo ONNX exporter), got {opset!r}")
    if not (isinstance(rtol, int | float) and math.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be a positive number, got {rtol!r}")
    if "onnx" in formats:
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(
                f"the ONNX export needs the package(s) {' and '.join(missing)}: `pip install onnx onnxscript` "
                "(and onnxruntime to verify it), or export the torch_export format only"
            )
        import onnx

        if opset > onnx.defs.onnx_opset_version():
            raise ValueError(
                f"opset {opset} is newer than the installed onnx {onnx.__version__} knows "
                f"(at most {onnx.defs.onnx_opset_version()})"
            )
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    targets = {fmt: out / _FILES[fmt] for fmt in formats} | {"spec": out / SPEC_FILE}
    if not overwrite:
        _refuse_existing(targets.values())

    from ferfast.api import load_trained
    from ferfast.data import FACE_MEAN, FACE_STD

    model, class_names, cfg = load_trained(checkpoint, ema=ema)
    model = model.to(torch.float32)
    size = _image_size(model, cfg.data.image_size)
    mean, std = [float(m) for m in FACE_MEAN], [float(s) for s in FACE_STD]
    exported = PixelNormalizedClassifier(model, mean, std).eval() if include_preprocessing else model
    dtype = getattr(torch, dtype_name)
    spec = _spec(
        checkpoint,
        cfg.model.name,
        class_names,
        size,
        mean,
        std,
        include_preprocessing,
        dtype_name,
        formats,
        opset if "onnx" in formats else None,
        ema,
    )
    spec_text = json.dumps(spec, indent=2, sort_keys=False)
    example = _inputs(_TRACE_BATCH, size, dtype, include_preprocessing, mean, std, seed=1234)
    blobs: dict[str, bytes] = {}
    if "onnx" in formats:
        blobs["onnx"] = _export_onnx(exported, example, opset, spec_text)
    if "torch_export" in formats:
        blobs["torch_export"] = _export_program(exported, example, spec_text)

    diffs: dict[str, float] = {}
    not_verified: dict[str, str] = {}
    if verify:
        batches = [_inputs(b, size, dtype, include_preprocessing, mean, std, seed=b) for b in VERIFY_BATCH_SIZES]
        with torch.no_grad():
            expected = [_reference(model, x, include_preprocessing, mean, std) for x in batches]
        runners = {"onnx": _onnx_runner, "torch_export": _program_runner}
        for fmt, blob in blobs.items():
            run = runners[fmt](blob)
            if run is None:
                not_verified[fmt] = "onnxruntime is not installed (only onnx.checker ran)"
                continue
            diffs[fmt] = _compare(fmt, run, batches, expected, rtol)
    else:
        not_verified = {fmt: "verification turned off" for fmt in blobs}
    spec["verification"] = {}
    for fmt in blobs:
        if fmt not in diffs:
            spec["verification"][fmt] = {"skipped": not_verified[fmt]}
            continue
        record = {"max_abs_diff": diffs[fmt], "batch_sizes": list(VERIFY_BATCH_SIZES), "rtol": rtol}
        if fmt == "onnx":
            record["runtime"] = _onnxruntime_version()
        spec["verification"][fmt] = record

    from ferfast._io import write_atomic, write_text_atomic

    if not overwrite:  # again: the export took a while
        _refuse_existing(targets.values())
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for fmt, blob in blobs.items():
        files[fmt] = write_atomic(targets[fmt], lambda fh, b=blob: fh.write(b))
    files["spec"] = write_text_atomic(targets["spec"], json.dumps(spec, indent=2) + "\n")
    return ExportResult(files=files, spec=spec, max_abs_diff=diffs, not_verified=not_verified)


def _refuse_existing(paths: Iterable[Path]) -> None:
    """Raise FileExistsError naming the first of ``paths`` that exists."""
    for path in paths:
        if path.exists():
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True (--force on the command line) to replace it"
            )


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(dict.fromkeys(str(f).replace("-", "_") for f in formats))
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats}")
    return formats


def _check_input_dtype(input_dtype: str | None, include_preprocessing: bool) -> str:
    if input_dtype is None:
        return "uint8" if include_preprocessing else "float32"
    if input_dtype not in _INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {_INPUT_DTYPES}, got {input_dtype!r}")
    if not include_preprocessing and input_dtype != "float32":
        raise ValueError(
            "without the built-in preprocessing the input is the normalised float32 tensor: "
            f"input_dtype must be 'float32', got {input_dtype!r}"
        )
    return input_dtype


def _image_size(model: nn.Module, image_size: int) -> tuple[int, int]:
    """The classifier's input size: its patch embedding's ``img_size``, else the config's ``data.image_size``."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, tuple | list) and len(size) == 2:
        return int(size[0]), int(size[1])
    return int(image_size), int(image_size)


def _inputs(
    batch: int, size: tuple[int, int], dtype: torch.dtype, pixels: bool, mean: list[float], std: list[float], seed: int
) -> Tensor:
    """Random inputs of the exported function: pixels 0..255 (as ``dtype``) or their normalised float32 values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8)
    if pixels:
        return x.to(dtype)
    return _normalize(x, mean, std)


def _normalize(pixels: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """``(pixels / 255 - mean) / std`` in float32, as :func:`ferfast.predict` computes it."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels.to(torch.float32) / 255.0 - m) / s


def _reference(model: nn.Module, x: Tensor, pixels: bool, mean: list[float], std: list[float]) -> Tensor:
    """The PyTorch classifier's logits for the exported function's input ``x`` (normalised here, independently)."""
    return model(_normalize(x, mean, std) if pixels else x).float()


def _export_onnx(module: nn.Module, example: Tensor, opset: int, spec_text: str) -> bytes:
    """``module`` as a serialised ONNX model (dynamo exporter, dynamic batch, the spec in its metadata), checked."""
    import onnx

    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        module,
        (example,),
        None,
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={_forward_arg(module): {0: batch}},
        verbose=False,
        external_data=False,
    )
    if program is None:  # pragma: no cover - the dynamo exporter always returns its program
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    program.model.metadata_props[METADATA_KEY] = spec_text
    program.model.doc_string = "ferfast facial-expression classifier; see the metadata key " + METADATA_KEY
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _export_program(module: nn.Module, example: Tensor, spec_text: str) -> bytes:
    """``module`` as a ``torch.export`` program with a dynamic batch axis, serialised by ``torch.export.save``."""
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.export.export(
            module, (example,), dynamic_shapes={_forward_arg(module): {0: batch}}, strict=False
        )
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_KEY: spec_text})
    return buffer.getvalue()


def _forward_arg(module: nn.Module) -> str:
    """The name of ``module.forward``'s single input (``dynamic_shapes`` is keyed by it)."""
    import inspect

    params = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params:
        raise TypeError(f"{type(module).__name__}.forward takes no positional input")
    return params[0].name


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return f"onnxruntime {onnxruntime.__version__}"


def _onnx_runner(blob: bytes) -> Any:
    """A function running the serialised ONNX model in onnxruntime on the CPU; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def _program_runner(blob: bytes) -> Any:
    """A function running the serialised ``torch.export`` program (loaded back from its bytes)."""
    module = torch.export.load(io.BytesIO(blob)).module()
    return lambda x: module(x)


def _compare(fmt: str, run: Any, batches: list[Tensor], expected: list[Tensor], rtol: float) -> float:
    """The largest absolute difference of ``run``'s logits from ``expected``; raises beyond the tolerance."""
    worst = 0.0
    for x, ref in zip(batches, expected):
        with torch.no_grad():
            got = run(x).float()
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportVerificationError(
                f"the exported {fmt} model gives logits of shape {tuple(got.shape)} for a "
                f"batch of {x.shape[0]}, PyTorch {tuple(ref.shape)}"
            )
        diff = float((got - ref).abs().max()) if ref.numel() else 0.0
        if not math.isfinite(diff):
            diff = math.inf
        bound = rtol * max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
        if diff > bound:
            raise ExportVerificationError(
                f"the exported {fmt} model's logits differ from PyTorch's by up to {diff:.3g} on a batch of "
                f"{x.shape[0]} (tolerance {bound:.3g}); nothing was written"
            )
        worst = max(worst, diff)
    return worst


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec(
    checkpoint: Path,
    model_name: str,
    class_names: list[str],
    size: tuple[int, int],
    mean: list[float],
    std: list[float],
    pixels: bool,
    dtype_name: str,
    formats: tuple[str, ...],
    opset: int | None,
    ema: bool,
) -> dict[str, Any]:
    """The content of ``preprocessing.json`` (without its ``verification``)."""
    from ferfast import __version__

    shape = ["batch", 3, size[0], size[1]]
    resize = (
        f"crop the face (ferfast.predict: the largest face found, widened by 20% on each side), then resize "
        f"to {size[0]}x{size[1]} pixels with bicubic interpolation and antialiasing"
    )
    if pixels:
        input_spec = {
            "name": INPUT_NAME,
            "shape": shape,
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": dtype_name,
            "range": [0, 255],
            "normalized_in_model": True,
        }
        steps = [resize, "pass the RGB pixels 0..255 as they are: the model computes (x / 255 - mean) / std"]
    else:
        input_spec = {
            "name": INPUT_NAME,
            "shape": shape,
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": "float32",
            "range": None,
            "normalized_in_model": False,
        }
        steps = [resize, "scale to [0, 1] (x / 255), then subtract mean and divide by std, per channel"]
    preprocessing = {
        "built_in": pixels,
        "mean": mean,
        "std": std,
        "scale": 1.0 / 255.0,
        "formula": "(x / 255 - mean) / std, per RGB channel",
        "steps": steps,
    }
    meaning = "logits in the order of class_names; softmax over the last axis gives probabilities"
    output = {"name": OUTPUT_NAME, "shape": ["batch", len(class_names)], "dtype": "float32", "meaning": meaning}
    source = {
        "checkpoint": str(checkpoint.resolve()),
        "sha256": _sha256(checkpoint),
        "weights": "ema (when the checkpoint has them)" if ema else "model",
    }
    return {
        "format_version": SPEC_VERSION,
        "model_name": model_name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "image_size": [size[0], size[1]],
        "input": input_spec,
        "preprocessing": preprocessing,
        "output": output,
        "source": source,
        "files": {fmt: _FILES[fmt] for fmt in formats},
        "onnx_opset": opset,
        "versions": {"ferfast": __version__, "torch": torch.__version__},
    }
