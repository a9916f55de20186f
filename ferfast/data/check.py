"""Checking and decoding encoded face images: find the unreadable ones once, skip them cheaply after.

``python -m ferfast.train data check ROOT`` decodes every image of a dataset with
:func:`check_images` and writes the unreadable ones to ``ROOT/ferfast_unreadable.txt``
(:func:`write_unreadable`), which :meth:`FaceDataset.skip_unreadable` reads. At training time
loaders decode with :func:`decode_rgb` and count what still fails with a :class:`SkipCounter`,
which warns without flooding the log.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ferfast._io import write_text_atomic
from ferfast.data.base import FaceDataset

__all__ = [
    "IMG_EXTENSIONS",
    "CheckReport",
    "SkipCounter",
    "UnreadableImageError",
    "check_image",
    "check_images",
    "decode_rgb",
    "list_image_files",
    "write_unreadable",
]

#: The image file extensions of torchvision's ``ImageFolder`` (matched case-insensitively).
IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: Below this many images :func:`check_images` decodes in the calling thread unless told otherwise.
_SMALL_INPUT = 512
_MAX_REASON = 120


class UnreadableImageError(OSError):
    """An image that cannot be decoded: ``file`` names it, ``reason`` says why (as in the unreadable list).

    ``UnreadableImageError(message)`` alone is accepted too (``reason`` is then None): torch's
    DataLoader re-raises a worker's error that way.
    """

    def __init__(self, file: str, reason: str | None = None) -> None:
        super().__init__(file if reason is None else f"unreadable image {file}: {reason}")
        self.file = file
        self.reason = reason

    def __reduce__(self):  # pickles across DataLoader workers and process pools
        return (type(self), (self.file, self.reason))


def _short(message: str) -> str:
    text = " ".join(str(message).split())  # no tabs or newlines: the reason is one field of one line
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 RGB from any PIL mode: grey, 16-bit grey, CMYK, palette, alpha (dropped, as torchvision does)."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":  # 16-bit grey PNG/TIFF: keep the top 8 bits
        grey = np.asarray(image).astype(np.int64)
        if mode != "I" or grey.max(initial=0) > 255:
            grey = np.clip(grey, 0, 65535) >> 8
        grey = grey.astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)  # a new, writable, contiguous array
    if mode in ("P", "PA"):  # a palette with transparency converts cleanly only through RGBA
        image = image.convert("RGBA")
    return np.array(image.convert("RGB"), dtype=np.uint8)


#: EXIF orientations other than "as stored" (1): the decoded image is flipped/rotated to its displayed form.
_REORIENTED = frozenset(range(2, 9))


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF orientation applied (``ImageOps.exif_transpose``), as DALI's decoders do.

    One rule for every loader: DALI applies the tag by default, so PIL must too, and the size probe
    (:func:`ferfast.data.imageio.probe_image`) reports the displayed size. A malformed EXIF block is ignored.
    """
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        return image
    if orientation not in _REORIENTED:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _decode(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """Decode fully to HWC uint8 RGB, EXIF orientation applied; returns the array, or None and the short reason it
    cannot be decoded."""
    if not data:
        return None, "empty file"
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        return None, "not an image"
    except Image.DecompressionBombError as e:
        return None, _short(f"too large to decode ({e})")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        message = str(e)
        if "truncated" in message.lower():
            return None, "truncated"
        return None, _short(f"corrupt ({type(e).__name__}: {message})" if message else f"corrupt ({type(e).__name__})")
    if image.width <= 0 or image.height <= 0:
        return None, f"zero-size image ({image.width}x{image.height})"
    try:
        return _to_rgb_array(_apply_exif_orientation(image)), None
    except Exception as e:  # an exotic mode PIL cannot convert
        return None, _short(f"cannot convert mode {image.mode} to RGB ({e})")


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL refuse truncated files while checking (a user may have set ``LOAD_TRUNCATED_IMAGES``)."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def check_image(data: bytes) -> str | None:
    """Fully decode an encoded image; None when it decodes, else a short reason ("truncated", "not an image", ...).

    Truncated files fail even where ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"check_image: data must be the encoded image's bytes, got {type(data).__name__}")
    with _strict_truncation():
        return _decode(bytes(data))[1]


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded image to an ``[H, W, 3]`` uint8 RGB array (grey, CMYK, palette and alpha converted), as
    displayed: its EXIF orientation applied, as DALI's decoders do.

    Raises :class:`UnreadableImageError` naming ``name`` when it cannot be decoded.
    """
    array, reason = _decode(data)
    if array is None:
        raise UnreadableImageError(name, reason or "unreadable")
    return array


class SkipCounter:
    """Counts the images a loader skipped as unreadable and warns, naming each file, without flooding the log.

    The first ``verbose`` skips warn one by one, then only the 2x, 4x, 8x, ... ``verbose``-th do
    (so a million bad files give 26 warnings). Each DataLoader worker holds its own copy.
    """

    def __init__(self, what: str = "images", *, verbose: int = 10) -> None:
        if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 1:
            raise ValueError(f"SkipCounter: verbose must be a positive int, got {verbose!r}")
        self.what = what
        self.verbose = verbose
        self.count = 0
        self._next_warning = 1

    def skip(self, file: str, reason: str) -> None:
        """Count one skipped image; warn when this count is due a warning."""
        self.count += 1
        if self.count < self._next_warning:
            return
        message = f"skipped unreadable image {file} ({reason}); {self.count} {self.what} skipped so far"
        if self.count == self.verbose:
            message += (
                f"; from now on warning only at {2 * self.verbose}, {4 * self.verbose}, ... skips "
                "(`python -m ferfast.train data check ROOT` lists them all, and loaders then skip them up front)"
            )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        self._next_warning = self.count + 1 if self.count < self.verbose else 2 * self.count

    def load(self, dataset: FaceDataset, index: int) -> np.ndarray | None:
        """Image ``index`` of ``dataset`` as HWC uint8 RGB, or None (counted and warned) when unreadable."""
        try:
            return decode_rgb(dataset.read_bytes(index), dataset.files[index])
        except OSError as e:  # undecodable, or a missing file or failing reader
            reason = e.reason if isinstance(e, UnreadableImageError) and e.reason else _short(str(e))
            self.skip(dataset.files[index], reason)
        return None


@dataclass
class CheckReport:
    """What :func:`check_images` found: how many images it decoded and which ones failed, with why."""

    total: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  #: ``(file, reason)``, in input order

    @property
    def ok(self) -> bool:
        """True when every image decoded."""
        return not self.unreadable


def list_image_files(root: str | os.PathLike) -> list[str]:
    """The files under ``root`` with an image extension (recursively, following links), sorted, relative to ``root``.

    Names use ``/`` on every OS, as dataset file lists do.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    files = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            if name.lower().endswith(IMG_EXTENSIONS):
                files.append((Path(folder) / name).relative_to(root).as_posix())
    return sorted(files)


def _check_file(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as e:
        return _short(f"cannot read ({e.strerror or e})")
    return _decode(data)[1]


def _check_bytes_of(dataset: FaceDataset, i: int) -> Callable[[], str | None]:
    """Read image ``i`` now (readers need not be thread-safe) and return the decoding job."""
    try:
        data = dataset.read_bytes(i)
    except OSError as e:
        reason = _short(f"cannot read ({e})")
        return lambda: reason
    return lambda: _decode(data)[1]


def _check_workers(workers: int | None, total: int) -> int:
    if workers is None:
        return 1 if total < _SMALL_INPUT else max(1, min(8, os.cpu_count() or 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"check_images: workers must be a positive int, got {workers!r}")
    return workers


def check_images(
    source: FaceDataset | str | os.PathLike,
    *,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> CheckReport:
    """Decode every image of a :class:`FaceDataset` or of a folder tree and report the unreadable ones.

    Args:
        source: a dataset (every ``read_bytes(i)``) or a folder (every file with an image extension
            of :data:`IMG_EXTENSIONS`, recursively; such a file that is not an image is unreadable).
        progress: called as ``progress(done, total)`` as images finish (e.g. to drive a tqdm bar).
        workers: decoding threads (PIL decodes without the GIL); default 1 for under 512 images,
            else up to 8. Dataset images are read in the calling thread, decoded in the workers.
    """
    if isinstance(source, FaceDataset):
        total = len(source)
        names = source.files
        jobs: Iterator[Callable[[], str | None]] = (_check_bytes_of(source, i) for i in range(total))
    elif isinstance(source, (str, os.PathLike)):
        root = Path(source)
        names = list_image_files(root)
        total = len(names)
        jobs = ((lambda p=root / name: _check_file(p)) for name in names)
    else:
        raise TypeError(f"check_images: source must be a FaceDataset or a folder path, got {type(source).__name__}")
    n_workers = _check_workers(workers, total)

    report = CheckReport(total=total)
    with _strict_truncation():
        for i, reason in enumerate(_run(jobs, n_workers)):
            if reason is not None:
                report.unreadable.append((names[i], reason))
            if progress is not None:
                progress(i + 1, total)
    return report


def _run(jobs: Iterator[Callable[[], str | None]], workers: int) -> Iterator[str | None]:
    """Results of ``jobs`` in order, at most a few per worker in flight (bounded memory on huge datasets)."""
    if workers == 1:
        for job in jobs:
            yield job()
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ferfast-check") as pool:
        pending: deque[Future[str | None]] = deque()
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_unreadable(report: CheckReport, path: str | os.PathLike) -> Path:
    """Write the unreadable files of ``report`` (``file<TAB>reason`` per line, ``#`` header), atomically.

    The format is what :func:`ferfast.data.base.load_unreadable` reads; an empty list is written
    too, so a stale list from an earlier check does not linger.
    """
    path = Path(path)
    seen: set[str] = set()
    lines = [
        f"# ferfast unreadable images, written by `python -m ferfast.train data check` on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"# {len(report.unreadable)} of {report.total} images unreadable; one file per line: file<TAB>reason",
    ]
    for file, reason in report.unreadable:
        if "\t" in file or "\n" in file or "\r" in file or file.startswith("#") or file != file.strip():
            raise ValueError(
                f"write_unreadable: file name {file!r} cannot be listed (a tab, a newline, a leading '#' "
                "or surrounding spaces); rename it or delete it"
            )
        if file not in seen:
            seen.add(file)
            lines.append(f"{file}\t{_short(reason)}")
    return write_text_atomic(path, "\n".join(lines) + "\n")
