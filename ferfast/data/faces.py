"""Face boxes for datasets without box annotations: a one-off detector pass cached to a sidecar file.

Face-IoU Mixup needs a face box per image. AffectNet's CSV and RAF-DB's original photos have
them; aligned crops (RAF-DB aligned, FERPlus, ImageFolder, unlabeled collections) do not.
:func:`detect_faces` runs a :class:`FaceDetector` (OpenCV's Haar cascade, Viola-Jones) over such a
dataset once and writes ``ROOT/ferfast_boxes.csv`` (:func:`ferfast.data.base.save_box_sidecar`),
which the formats attach when they open the dataset; no detector runs in the training loop.
An image where no face is found gets an empty row: loaders then use the whole aligned crop.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ferfast.data.base import BOX_SIDECAR, FaceDataset, load_box_sidecar, save_box_sidecar
from ferfast.data.check import decode_rgb, list_image_files

__all__ = ["DEFAULT_CASCADE", "FaceDetector", "FaceDetectorLike", "detect_faces", "import_cv2"]

#: The cascade :class:`FaceDetector` loads by default, from ``cv2.data.haarcascades``.
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


class FaceDetectorLike(Protocol):
    """What :func:`detect_faces` needs: ``detect(image_rgb) -> relative xyxy box | None``."""

    def detect(self, image: np.ndarray) -> np.ndarray | None: ...


def import_cv2() -> Any:
    """OpenCV with its Haar cascades (``cv2.CascadeClassifier``), or an ImportError saying what to install."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "face detection needs OpenCV (a ferfast dependency): pip install 'opencv-python-headless<5'"
        ) from e
    if not hasattr(cv2, "CascadeClassifier"):
        raise ImportError(
            f"OpenCV {cv2.__version__} has no Haar cascades (cv2.CascadeClassifier): OpenCV 5 moved them out of "
            "opencv-python-headless. Install OpenCV 4: pip install 'opencv-python-headless<5' "
            "(or pass your own detector to detect_faces)"
        )
    return cv2


class FaceDetector:
    """The largest frontal face in an image, found with OpenCV's Haar cascade and tuned for small aligned FER crops.

    Small images (FERPlus's 48x48, RAF-DB's 100x100) are upscaled so their shorter side is at least
    ``upscale_to`` pixels and padded by ``pad`` of their size with replicated borders, so that a face
    filling the whole crop still fits the cascade's window; the histogram is equalised first.

    Args:
        cascade: a cascade XML file; None loads :data:`DEFAULT_CASCADE` from ``cv2.data.haarcascades``.
        scale_factor: the image pyramid's step (``detectMultiScale``'s ``scaleFactor``).
        min_neighbors: overlapping detections a face needs (``minNeighbors``); more = fewer false faces.
        min_size: the smallest face, as a fraction of the image's shorter side.
        upscale_to: upscale images whose shorter side is below this many pixels.
        pad: border added on each side, as a fraction of the (upscaled) image's longer side.
    """

    def __init__(
        self,
        cascade: str | os.PathLike | None = None,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_size: float = 0.2,
        upscale_to: int = 160,
        pad: float = 0.1,
    ) -> None:
        if not scale_factor > 1.0:
            raise ValueError(f"FaceDetector: scale_factor must be > 1, got {scale_factor!r}")
        if isinstance(min_neighbors, bool) or not isinstance(min_neighbors, int) or min_neighbors < 0:
            raise ValueError(f"FaceDetector: min_neighbors must be an int >= 0, got {min_neighbors!r}")
        if not 0.0 < min_size <= 1.0:
            raise ValueError(f"FaceDetector: min_size must be in (0, 1], got {min_size!r}")
        if isinstance(upscale_to, bool) or not isinstance(upscale_to, int) or upscale_to < 0:
            raise ValueError(f"FaceDetector: upscale_to must be an int >= 0, got {upscale_to!r}")
        if not 0.0 <= pad <= 1.0:
            raise ValueError(f"FaceDetector: pad must be in [0, 1], got {pad!r}")
        cv2 = import_cv2()
        path = Path(cascade) if cascade is not None else Path(cv2.data.haarcascades) / DEFAULT_CASCADE
        if not path.is_file():
            raise FileNotFoundError(f"FaceDetector: cascade file not found: {path}")
        classifier = cv2.CascadeClassifier(str(path))
        if classifier.empty():
            raise ValueError(f"FaceDetector: {path} is not an OpenCV cascade file")
        self._cv2 = cv2
        self._classifier = classifier
        self.cascade = path
        self.scale_factor = float(scale_factor)
        self.min_neighbors = min_neighbors
        self.min_size = float(min_size)
        self.upscale_to = upscale_to
        self.pad = float(pad)

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """The largest face in an ``[H, W]`` grey or ``[H, W, 3|4]`` RGB(A) uint8 image, as a relative xyxy box
        (float32, clipped to ``[0, 1]``), or None when there is none."""
        cv2 = self._cv2
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise TypeError(f"FaceDetector.detect: image must be uint8, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 3 and image.shape[2] in (3, 4):
            grey = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
        elif image.ndim == 2:
            grey = np.ascontiguousarray(image)
        else:
            raise ValueError(f"FaceDetector.detect: image must be [H, W] or [H, W, 3|4], got shape {image.shape}")
        height, width = grey.shape
        if height == 0 or width == 0:
            raise ValueError(f"FaceDetector.detect: empty image of shape {image.shape}")
        scale = max(1.0, self.upscale_to / min(height, width))
        if scale > 1.0:
            grey = cv2.resize(grey, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
        grey = cv2.equalizeHist(grey)
        border = round(self.pad * max(grey.shape))
        if border:
            grey = cv2.copyMakeBorder(grey, border, border, border, border, cv2.BORDER_REPLICATE)
        side = max(1, round(self.min_size * min(height, width) * scale))
        faces = self._classifier.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        if len(faces) == 0:
            return None
        x, y, w, h = (float(v) for v in max(faces, key=lambda f: int(f[2]) * int(f[3])))
        box = np.array([x - border, y - border, x + w - border, y + h - border], np.float64) / scale
        box /= np.array([width, height, width, height], np.float64)
        return np.clip(box, 0.0, 1.0).astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"FaceDetector(cascade={self.cascade.name!r}, scale_factor={self.scale_factor}, "
            f"min_neighbors={self.min_neighbors}, min_size={self.min_size}, upscale_to={self.upscale_to}, "
            f"pad={self.pad})"
        )


def _images_of(
    source: FaceDataset | Sequence[FaceDataset] | str | os.PathLike,
) -> tuple[Path, list[str], list[Callable[[], bytes]]]:
    """The root, the file names and a reader per image of a dataset, datasets of one root, or a folder."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        files = list_image_files(root)
        return root, files, [(lambda p=root / f: p.read_bytes()) for f in files]
    if isinstance(source, FaceDataset):
        datasets = [source]
    else:
        datasets = list(source) if isinstance(source, (list, tuple)) else []
    if not datasets or not all(isinstance(d, FaceDataset) for d in datasets):
        raise TypeError("detect_faces: source must be a FaceDataset, a list of FaceDatasets or a folder path")
    root = datasets[0].root
    if any(d.root != root for d in datasets):
        roots = sorted({str(d.root) for d in datasets})
        raise ValueError(f"detect_faces: datasets must share one root (one sidecar), got {roots}")
    files: list[str] = []
    readers: list[Callable[[], bytes]] = []
    seen: set[str] = set()
    for ds in datasets:
        for i, f in enumerate(ds.files):
            if f not in seen:
                seen.add(f)
                files.append(f)
                readers.append(lambda ds=ds, i=i: ds.read_bytes(i))
    return root, files, readers


def detect_faces(
    source: FaceDataset | Sequence[FaceDataset] | str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    detector: FaceDetectorLike | None = None,
    force: bool = False,
) -> Path:
    """Find the face in every image of a dataset (or datasets of one root, or a folder) and write the box sidecar.

    Args:
        source: a :class:`FaceDataset`, a list of them sharing one root (e.g. its splits), or a folder
            (every image file under it, see :func:`ferfast.data.check.list_image_files`).
        out: the sidecar; default ``ROOT/ferfast_boxes.csv``, where the formats look for it.
        progress: called as ``progress(done, total)`` as images finish.
        detector: default a :class:`FaceDetector`; anything with ``detect(image_rgb) -> box | None``.
        force: recompute images the sidecar already has (their image changed, or a new detector).

    Cached: images already in the sidecar are not detected again unless ``force``; rows of other files
    in it are kept. Unreadable images are counted (one warning) and written as "no face".
    Returns the sidecar's path.
    """
    root, files, readers = _images_of(source)
    out = root / BOX_SIDECAR if out is None else Path(out)
    known: dict[str, np.ndarray] = {}
    if out.is_file():
        try:
            known = load_box_sidecar(out)
        except ValueError as e:
            if not force:
                raise ValueError(f"{e} (detect_faces(force=True) rewrites it)") from None
    todo = [i for i, f in enumerate(files) if force or f not in known]
    if not todo:
        return out
    if detector is None:
        detector = FaceDetector()

    found: dict[str, np.ndarray] = {}
    unreadable: list[str] = []
    no_face = np.full(4, np.nan, np.float32)
    for done, i in enumerate(todo, 1):
        try:
            image = decode_rgb(readers[i](), files[i])
        except OSError:
            unreadable.append(files[i])
            box = None
        else:
            box = detector.detect(image)
        found[files[i]] = no_face if box is None else np.asarray(box, np.float32).reshape(4)
        if progress is not None:
            progress(done, len(todo))
    if unreadable:
        warnings.warn(
            f"detect_faces: {len(unreadable)} unreadable image(s) written as 'no face', e.g. {unreadable[0]}; "
            "`python -m ferfast.train data check ROOT` lists them so that loaders skip them",
            RuntimeWarning,
            stacklevel=2,
        )

    rows = {**known, **found}
    requested = set(files)
    names = files + [f for f in known if f not in requested]  # rows of other files (e.g. other splits) stay
    boxes = np.stack([rows[f] for f in names]) if names else np.zeros((0, 4), np.float32)
    with_face = int(np.isfinite(boxes).all(axis=1).sum())
    comment = (
        f"face boxes (relative xyxy; empty = no face found) written by ferfast.data.faces.detect_faces on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')} with {detector!r}\n"
        f"{with_face} of {len(names)} images with a face"
    )
    return save_box_sidecar(out, names, boxes, comment=comment)
