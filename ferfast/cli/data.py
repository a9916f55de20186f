"""``python -m ferfast.train data {check,detect,synth}``: get face datasets ready before training.

- ``check``: decode every image once and list the unreadable ones, so that loaders skip them;
- ``detect``: find the face in every image once (OpenCV's Haar cascade) and cache the boxes that
  face-IoU Mixup needs, for datasets without box annotations;
- ``synth``: write a synthetic FER dataset (RAF-DB's layout plus an unlabeled pool) to try ferfast
  without downloading anything.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ferfast.cli import nonnegative_int, positive_int, progress_bar

__all__ = ["FORMAT_CHOICES", "add_parser", "run"]

#: ``--format`` values: ``auto`` guesses from ROOT's files; the others are ``ferfast.data.formats`` names.
FORMAT_CHOICES: tuple[str, ...] = (
    "auto",
    "rafdb",
    "ferplus",
    "affectnet",
    "affectnet7",
    "affectnet8",
    "imagefolder",
    "synthetic",
    "folder",
    "filelist",
    "mxrec",
)
#: The splits a run without ``--split`` goes through, per format. AffectNet's "test" is its validation set.
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "rafdb": ("train", "test"),
    "synthetic": ("train", "test"),
    "ferplus": ("train", "val", "test"),
    "affectnet": ("train", "val"),
    "affectnet7": ("train", "val"),
    "affectnet8": ("train", "val"),
    "imagefolder": ("train", "test"),
    "folder": ("train",),
    "filelist": ("train",),
    "mxrec": ("train",),
}
#: Splits a run without ``--split`` may find absent (it says so and goes on).
_OPTIONAL_SPLITS = {("imagefolder", "test")}
_SHOW_UNREADABLE = 10

_DATA_HELP = """\
Prepare a face dataset before training (each step runs once and is cached in ROOT):

  check   decode every image, list the unreadable ones in ROOT/ferfast_unreadable.txt
          (the dataset formats then skip them)
  detect  find the face in every image, cache the boxes in ROOT/ferfast_boxes.csv
          (face-IoU Mixup uses them; an image without a face uses the whole crop)
  synth   write a synthetic FER dataset to try ferfast without downloading anything

examples:
  python -m ferfast.train data synth data/synthetic --train 700 --test 210 --unlabeled 1000
  python -m ferfast.train data check data/synthetic
  python -m ferfast.train data detect ~/datasets/RAF-DB/basic
"""

_FORMAT_HELP = (
    f"the dataset's format, one of: {', '.join(FORMAT_CHOICES)}. Default: auto, guessed from ROOT's files "
    "(RAF-DB's EmoLabel/list_patition_label.txt, FERPlus's fer2013new.csv, AffectNet's training.csv, train.rec, "
    "train/<class>/ folders, else any folder of images)"
)
_SPLIT_HELP = (
    "a split to go through: train, val, test (which exist depends on the format); repeat the option for several "
    "(default: every split of the format)"
)

_CHECK_HELP = """\
Decode every image of a dataset (every split) and list the ones that cannot be read (corrupt,
truncated, empty, not an image) in ROOT/ferfast_unreadable.txt, one per line with the reason.
The dataset formats skip the files listed there when they open ROOT, so training does not stop
on them. Run it again after fixing or deleting files: it re-checks every image.

ROOT is a dataset folder in a known format, or any folder of images (checked recursively).

exit status: 0 when every image is readable, 1 when some are not (they are listed), 2 on bad
options or when ROOT cannot be opened.
"""

_DETECT_HELP = """\
Find the face in every image of a dataset without box annotations (RAF-DB's aligned crops,
FERPlus, ImageFolder, unlabeled face folders) with OpenCV's Haar cascade, and write the boxes to
ROOT/ferfast_boxes.csv, where the dataset formats pick them up. Images where no face is found get
an empty row: training then uses the whole (aligned) crop as the face box. AffectNet needs no
detection: its CSV has a box for every image.

Cached: images already in the file are not detected again (new images are added) unless --force.
Needs OpenCV with its Haar cascades: pip install 'opencv-python-headless<5'.
"""

_SYNTH_HELP = """\
Write a synthetic facial-expression dataset: procedurally drawn faces with the seven basic
expressions (neutral, happiness, sadness, surprise, fear, disgust, anger), many identities,
poses and lighting, as real JPEG files in RAF-DB basic's layout (EmoLabel/, Image/aligned/),
with known face boxes (ferfast_boxes.csv), plus an unlabeled face pool in OUT/unlabeled/.
Train and test identities are disjoint. The same options always give the same images; when OUT
already holds them nothing is written.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data`` and its ``check`` / ``detect`` / ``synth`` sub-commands to the ``ferfast.train`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser(
        "data", help="check, detect faces in, or synthesize face datasets", description=_DATA_HELP, formatter_class=fmt
    )
    commands = parser.add_subparsers(title="data commands", dest="data_command", metavar="{check,detect,synth}")
    commands.required = True

    check = commands.add_parser(
        "check", help="list the unreadable images of a dataset", description=_CHECK_HELP, formatter_class=fmt
    )
    check.add_argument("root", metavar="ROOT", help="the dataset's root folder (or a folder of images)")
    check.add_argument("--format", choices=FORMAT_CHOICES, default="auto", metavar="FORMAT", help=_FORMAT_HELP)
    check.add_argument("--split", action="append", metavar="SPLIT", help=_SPLIT_HELP)
    check.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write the list (default: ROOT/ferfast_unreadable.txt)"
    )
    check.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="decoding threads (default: 1 for under 512 images, else up to 8)",
    )
    check.set_defaults(data_run=_run_check, data_parser=check)

    detect = commands.add_parser(
        "detect", help="cache the face box of every image", description=_DETECT_HELP, formatter_class=fmt
    )
    detect.add_argument("root", metavar="ROOT", help="the dataset's root folder (or a folder of images)")
    detect.add_argument("--format", choices=FORMAT_CHOICES, default="auto", metavar="FORMAT", help=_FORMAT_HELP)
    detect.add_argument("--split", action="append", metavar="SPLIT", help=_SPLIT_HELP)
    detect.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="where to write the boxes (default: ROOT/ferfast_boxes.csv, where the formats look for them)",
    )
    detect.add_argument("--force", action="store_true", help="detect again in images that already have a row")
    detect.set_defaults(data_run=_run_detect, data_parser=detect)

    synth = commands.add_parser(
        "synth", help="write a synthetic FER dataset", description=_SYNTH_HELP, formatter_class=fmt
    )
    synth.add_argument(
        "out",
        metavar="OUT",
        type=Path,
        help="the folder to write (created; must be empty or an earlier `data synth` output)",
    )
    synth.add_argument(
        "--train", type=positive_int, default=6000, metavar="N", help="labeled training images (%(default)s)"
    )
    synth.add_argument("--test", type=positive_int, default=1500, metavar="N", help="labeled test images (%(default)s)")
    synth.add_argument(
        "--unlabeled",
        type=nonnegative_int,
        default=10000,
        metavar="N",
        help="images of the unlabeled pool, for MAE pretraining and FixMatch (%(default)s)",
    )
    synth.add_argument(
        "--identities",
        type=positive_int,
        default=600,
        metavar="N",
        help="people in the labeled images; test people are not in train (%(default)s)",
    )
    synth.add_argument(
        "--size", type=positive_int, default=100, metavar="PX", help="image side in pixels (%(default)s)"
    )
    synth.add_argument(
        "--intensity",
        type=float,
        default=1.0,
        metavar="X",
        help="expression strength: 0 = every face neutral, higher = easier to tell apart (%(default)s)",
    )
    synth.add_argument("--seed", type=nonnegative_int, default=0, metavar="S", help="random seed (%(default)s)")
    synth.add_argument(
        "--workers", type=positive_int, metavar="N", help="rendering processes (default: the CPUs, at most 8)"
    )
    synth.set_defaults(data_run=_run_synth, data_parser=synth)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``data`` sub-command that ``args`` names; returns the exit code."""
    return int(args.data_run(args))


# -- shared -------------------------------------------------------------------------------------


def _resolve_format(parser: argparse.ArgumentParser, root: Path, fmt: str) -> str:
    """The format name, ``auto`` resolved; a RAF-DB layout written by ``data synth`` is ``synthetic``."""
    if not root.exists():
        parser.error(f"argument ROOT: {root} does not exist")
    if fmt != "auto":
        return fmt
    from ferfast.data.formats import detect_format
    from ferfast.data.synthetic import SYNTHETIC_JSON

    try:
        fmt = detect_format(root)
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"argument ROOT: {e}")
    if fmt == "rafdb" and (root / SYNTHETIC_JSON).is_file():
        fmt = "synthetic"
    return fmt


def _open_splits(
    parser: argparse.ArgumentParser, root: Path, fmt: str, splits: list[str] | None, skip_unreadable: bool
) -> list[Any]:
    """Open each split of ROOT (every default split of the format when ``splits`` is None)."""
    from ferfast.data.formats import open_dataset

    datasets = []
    for split in splits or DEFAULT_SPLITS[fmt]:
        try:
            datasets.append(open_dataset(fmt, root, split, skip_unreadable=skip_unreadable))
        except FileNotFoundError as e:
            if splits is None and (fmt, split) in _OPTIONAL_SPLITS:
                print(f"  {split}: not there, skipped ({e})")
                continue
            parser.error(f"argument ROOT: cannot open the {split} split of {root} as {fmt}: {e}")
        except ValueError as e:
            if splits is not None and "split" in str(e):
                parser.error(f"argument --split: {e}")
            parser.error(f"argument ROOT: cannot open the {split} split of {root} as {fmt}: {e}")
    return datasets


def _hint_unlabeled_pool(root: Path, fmt: str, command: str) -> None:
    if fmt == "synthetic" and (root / "unlabeled").is_dir():
        print(
            f"the unlabeled pool is a dataset of its own: python -m ferfast.train data {command} {root / 'unlabeled'}"
        )


def _is_plain_folder(fmt: str) -> bool:
    return fmt == "folder"  # any folder of images: go through every image file under it


# -- check --------------------------------------------------------------------------------------


def _run_check(args: argparse.Namespace) -> int:
    from ferfast.data.base import UNREADABLE_FILE
    from ferfast.data.check import CheckReport, check_images, list_image_files, write_unreadable

    parser = args.data_parser
    root = Path(args.root)
    fmt = _resolve_format(parser, root, args.format)
    print(f"checking the images of {root} (format: {fmt})")
    sources: list[tuple[str, Any]]
    if _is_plain_folder(fmt):
        if not root.is_dir():
            parser.error(f"argument ROOT: {root} is not a folder")
        if not list_image_files(root):
            parser.error(f"argument ROOT: no image files under {root}")
        sources = [("images", root)]
        list_root = root
    else:
        datasets = _open_splits(parser, root, fmt, args.split, skip_unreadable=False)
        sources = [(ds.split, ds) for ds in datasets]
        list_root = datasets[0].root

    reports = []
    for label, source in sources:
        with progress_bar(f"check {label}") as progress:
            report = check_images(source, progress=progress, workers=args.workers)
        print(f"  {label}: {report.total} images, {len(report.unreadable)} unreadable")
        reports.append(report)
    merged = CheckReport(
        total=sum(r.total for r in reports), unreadable=[item for r in reports for item in r.unreadable]
    )
    out = args.out if args.out is not None else list_root / UNREADABLE_FILE
    try:
        path = write_unreadable(merged, out)
    except OSError as e:
        parser.error(f"argument --out: cannot write the list to {out}: {e}")
    except ValueError as e:  # a file name the list format cannot hold
        print(f"python -m ferfast.train data check: error: {e}", file=sys.stderr)
        return 2
    if merged.ok:
        print(f"all {merged.total} images are readable (wrote an empty list to {path})")
        _hint_unlabeled_pool(root, fmt, "check")
        return 0
    print(f"{len(merged.unreadable)} of {merged.total} images are unreadable:")
    for file, reason in merged.unreadable[:_SHOW_UNREADABLE]:
        print(f"  {file}: {reason}")
    if len(merged.unreadable) > _SHOW_UNREADABLE:
        print(f"  ... and {len(merged.unreadable) - _SHOW_UNREADABLE} more")
    print(f"the full list is in {path}")
    if args.out is None:
        print("the dataset formats skip the files listed there; fix or delete them and check again to use them")
    else:
        print("to skip them, pass that file to FaceDataset.skip_unreadable(path)")
    _hint_unlabeled_pool(root, fmt, "check")
    return 1


# -- detect -------------------------------------------------------------------------------------


def _run_detect(args: argparse.Namespace) -> int:
    from ferfast.data.base import BOX_SIDECAR, load_box_sidecar
    from ferfast.data.check import list_image_files
    from ferfast.data.faces import detect_faces

    parser = args.data_parser
    root = Path(args.root)
    fmt = _resolve_format(parser, root, args.format)
    if fmt.startswith("affectnet"):
        print("AffectNet's CSV has a face box for every image: no detection needed")
        return 0
    if _is_plain_folder(fmt):
        if not root.is_dir():
            parser.error(f"argument ROOT: {root} is not a folder")
        source: Any = root
        files = list_image_files(root)
        sidecar_root = root
    else:
        source = _open_splits(parser, root, fmt, args.split, skip_unreadable=True)
        files = list(dict.fromkeys(f for ds in source for f in ds.files))
        sidecar_root = source[0].root
    if not files:
        parser.error(f"argument ROOT: no images in {root}")
    out = args.out if args.out is not None else sidecar_root / BOX_SIDECAR

    known: dict[str, np.ndarray] = {}
    if out.is_file() and not args.force:
        try:
            known = load_box_sidecar(out)
        except ValueError as e:
            parser.error(f"argument --out: {e}; use --force to rewrite it")
    cached = sum(f in known for f in files)
    print(f"finding faces in {len(files)} images of {root} (format: {fmt})")
    if cached:
        print(f"  {cached} already have a row in {out} (cached; --force detects again)")
    try:
        with progress_bar("detect faces") as progress:
            path = detect_faces(source, out, progress=progress, force=args.force)
    except ImportError as e:
        print(f"python -m ferfast.train data detect: error: {e}", file=sys.stderr)
        return 2
    boxes = load_box_sidecar(path)
    found = sum(bool(f in boxes and np.isfinite(boxes[f]).all()) for f in files)
    print(f"a face was found in {found} of {len(files)} images; the other {len(files) - found} use the whole crop")
    print(f"boxes in {path}")
    _hint_unlabeled_pool(root, fmt, "detect")
    if args.out is not None and path != sidecar_root / BOX_SIDECAR:
        print(
            f"(the dataset formats read {sidecar_root / BOX_SIDECAR}; FaceDataset.attach_box_sidecar(path) reads yours)"
        )
    return 0


# -- synth --------------------------------------------------------------------------------------

#: write_synthetic_dataset / SyntheticFaceConfig argument names -> the options that set them
_SYNTH_OPTIONS = {
    "num_train": "--train",
    "num_test": "--test",
    "num_unlabeled": "--unlabeled",
    "num_identities": "--identities",
    "workers": "--workers",
    "size": "--size",
    "intensity": "--intensity",
    "seed": "--seed",
}


def _synth_option_error(parser: argparse.ArgumentParser, error: Exception) -> None:
    message = str(error)
    for name, option in _SYNTH_OPTIONS.items():
        if re.search(rf"(?<![\w]){name}(?![\w])", message):
            parser.error(f"argument {option}: {message}")
    parser.error(str(message))


def _run_synth(args: argparse.Namespace) -> int:
    from ferfast.data.synthetic import SyntheticFaceConfig, write_synthetic_dataset

    parser = args.data_parser
    try:
        config = SyntheticFaceConfig(size=args.size, intensity=args.intensity, seed=args.seed)
    except (TypeError, ValueError) as e:
        _synth_option_error(parser, e)
    total = args.train + args.test + args.unlabeled
    print(f"writing {total} synthetic face images ({args.size}x{args.size}) to {args.out}")
    rendered = False
    try:
        with progress_bar("synth") as bar:

            def progress(done: int, total: int) -> None:
                nonlocal rendered
                rendered = True
                bar(done, total)

            out = write_synthetic_dataset(
                args.out,
                num_train=args.train,
                num_test=args.test,
                num_unlabeled=args.unlabeled,
                num_identities=args.identities,
                config=config,
                workers=args.workers,
                progress=progress,
            )
    except (FileExistsError, NotADirectoryError) as e:  # a run-time failure (exit 1), naming OUT
        raise type(e)(f"argument OUT: {e}") from None
    except (TypeError, ValueError) as e:
        _synth_option_error(parser, e)
    if not rendered:
        print(f"{out} already holds this dataset (same options): nothing written")
    print(f"{out}: {args.train} train + {args.test} test images in RAF-DB basic's layout, 7 classes")
    if args.unlabeled:
        print(f"{out / 'unlabeled'}: {args.unlabeled} unlabeled faces")
    print(f"next: python -m ferfast.train data check {out}")
    return 0
