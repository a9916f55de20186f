"""Reading encoded images for the loaders: a cheap probe before decoding, and skipping what is unreadable.

DALI's decoders abort the whole pipeline on a broken file, so the DALI loader probes every image
in Python first (header parse for the size, and the end marker that a truncated JPEG or PNG
lacks) and only hands it complete files. Both loaders skip an unreadable image by taking the
next readable one in the dataset, count it, and warn (rate-limited): a bad file never kills an
epoch and the batch keeps its size.
"""

from __future__ import annotations

import io

from PIL import Image

from ferfast.data.base import FaceDataset
from ferfast.data.check import SkipCounter, UnreadableImageError

__all__ = ["probe_image", "read_probed"]

#: How far from a JPEG's end its EOI marker may sit (some writers pad after it).
_EOI_WINDOW = 1024
#: An unreadable image is replaced by the next readable one within this many dataset positions.
MAX_SUBSTITUTE_TRIES = 64

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, walking the marker segments; None if not found."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF_MARKERS:
            return (data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6]
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _fast_size(data: bytes) -> tuple[int, int] | None:
    """The size of a JPEG or PNG from its header bytes, without PIL (the DALI source probes every image)."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def probe_image(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """``(width, height)`` of an encoded image from its header, after checking it looks complete.

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
    except Exception as e:
        raise UnreadableImageError(name, f"not an image ({type(e).__name__}: {e})") from None
    if width <= 0 or height <= 0:
        raise UnreadableImageError(name, f"zero-size image ({width}x{height})")
    if fmt == "JPEG" and b"\xff\xd9" not in data[-_EOI_WINDOW:]:
        raise UnreadableImageError(name, "truncated (no JPEG end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise UnreadableImageError(name, "truncated (no PNG IEND chunk)")
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
