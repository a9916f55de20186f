"""Reading encoded images for the loaders: a cheap probe before decoding, and skipping what is unreadable.

DALI's decoders abort the whole pipeline on a broken file, so the DALI loader probes every image
in Python first (header parse for the size, and the end marker that a truncated JPEG or PNG
lacks) and only hands it complete files. Both loaders skip an unreadable image by taking the
next readable one in the dataset, count it, and warn (rate-limited): a bad file never kills an
epoch and the batch keeps its size.

Orientation: every decoder ferfast uses applies the EXIF orientation tag (DALI's decoders by default,
:func:`ferfast.data.check.decode_rgb` through ``PIL.ImageOps.exif_transpose``), so the probe reports the
*displayed* size: width and height swapped for orientations 5-8 (read from a JPEG's Exif APP1 segment or a
PNG's ``eXIf`` chunk without decoding; other formats through PIL). Crop windows and face boxes are in
displayed pixels.
"""

from __future__ import annotations

import io

from PIL import Image

from ferfast.data.base import FaceDataset
from ferfast.data.check import SkipCounter, UnreadableImageError

__all__ = ["exif_orientation", "probe_image", "read_probed"]

#: How far from a JPEG's end its EOI marker may sit (some writers pad after it).
_EOI_WINDOW = 1024
#: An unreadable image is replaced by the next readable one within this many dataset positions.
MAX_SUBSTITUTE_TRIES = 64

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


#: The EXIF orientation tag, and the orientations that transpose the image (swap width and height).
_ORIENTATION_TAG = 0x0112
_TRANSPOSING = frozenset((5, 6, 7, 8))


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag (1-8) of IFD0 of a TIFF-structured EXIF block; 1 when absent or malformed."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for k in range(count):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            break
        if int.from_bytes(tiff[e : e + 2], order) == _ORIENTATION_TAG:
            kind = int.from_bytes(tiff[e + 2 : e + 4], order)
            width = 2 if kind == 3 else 4  # SHORT, as the standard says; LONG from some writers
            value = int.from_bytes(tiff[e + 8 : e + 8 + width], order)
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """((width, height) as stored, EXIF orientation) from a JPEG's marker segments up to its start of frame.

    The orientation comes from the first ``Exif`` APP1 segment before the frame (where PIL and DALI read it).
    """
    i, n = 2, len(data)
    orientation, seen_exif = 1, False
    while i + 9 < n:
        if data[i] != 0xFF:
            return None, orientation
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF_MARKERS:
            return ((data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6]), orientation
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xE1 and not seen_exif and data[i + 4 : i + 10] == b"Exif\x00\x00":
            seen_exif = True
            orientation = _tiff_orientation(data[i + 10 : i + 2 + length])
        i += 2 + length
    return None, orientation


def _png_header(data: bytes) -> tuple[tuple[int, int], int]:
    """((width, height) as stored, EXIF orientation of an ``eXIf`` chunk) of a PNG, walking its chunks."""
    size = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        if kind == b"eXIf":
            return size, _tiff_orientation(data[i + 8 : i + 8 + length])
        if kind == b"IEND":
            break
        i += 12 + length
    return size, 1


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8, 1 = as stored) of an encoded JPEG or PNG from its header; 1 for other formats."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_header(data)[1]
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return _png_header(data)[1]
    return 1


def _oriented(size: tuple[int, int] | None, orientation: int) -> tuple[int, int] | None:
    return None if size is None else (size[1], size[0]) if orientation in _TRANSPOSING else size


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Displayed (width, height) of a JPEG: its start-of-frame size, swapped for EXIF orientations 5-8."""
    return _oriented(*_jpeg_header(data))


def _fast_size(data: bytes) -> tuple[int, int] | None:
    """The displayed size of a JPEG or PNG from its header bytes, without PIL (the DALI source probes every image)."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return _oriented(*_png_header(data))
    return None


def probe_image(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """Displayed ``(width, height)`` of an encoded image (EXIF orientation applied) from its header, after checking
    it looks complete.

    Raises :class:`UnreadableImageError` for empty files, non-images, and JPEG/PNG files whose
    end marker is missing (truncated). A corrupt body with intact markers is caught at decode.
    """
    if not data:
        raise UnreadableImageError(name, "empty file")
    size = _fast_size(data)
    if size is not None and size[0] > 0 and size[1] > 0:
        if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-_EOI_WINDOW:]:
            raise UnreadableImageError(name, "truncated (no JPEG end-of-image marker)")
        if data[:2] != b"\xff\xd8" and b"IEND" not in data[-64:]:
            raise UnreadableImageError(name, "truncated (no PNG IEND chunk)")
        return size
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            fmt = im.format
            try:  # as ImageOps.exif_transpose, which decode_rgb applies
                orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
            except Exception:
                orientation = 1
    except Exception as e:
        raise UnreadableImageError(name, f"not an image ({type(e).__name__}: {e})") from None
    if width <= 0 or height <= 0:
        raise UnreadableImageError(name, f"zero-size image ({width}x{height})")
    if fmt == "JPEG" and b"\xff\xd9" not in data[-_EOI_WINDOW:]:
        raise UnreadableImageError(name, "truncated (no JPEG end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise UnreadableImageError(name, "truncated (no PNG IEND chunk)")
    if orientation in _TRANSPOSING:
        width, height = height, width
    return int(width), int(height)


def read_probed(
    dataset: FaceDataset, i: int, skipped: SkipCounter, bad: set[int] | None = None
) -> tuple[int, bytes, tuple[int, int]]:
    """Image ``i``'s bytes and size, or the next readable image's (the skip is counted): ``(index, bytes, (w, h))``.

    ``bad``: indices known to be unreadable, passed over without reading; new failures are added to it.
    """
    n = len(dataset)
    for k in range(MAX_SUBSTITUTE_TRIES):
        j = (i + k) % n
        if bad is not None and j in bad:
            continue
        try:
            data = dataset.read_bytes(j)
            return j, data, probe_image(data, str(dataset.files[j]))
        except OSError as e:  # UnreadableImageError is an OSError, as is a missing file
            if bad is not None:
                bad.add(j)
            skipped.skip(str(dataset.files[j]), str(e))
    raise UnreadableImageError(
        f"{dataset.name}: {MAX_SUBSTITUTE_TRIES} images in a row from {dataset.files[i]} are unreadable; "
        "is the dataset root right? Run `python -m ferfast.train data check ROOT`."
    )
