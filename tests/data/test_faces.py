"""Face boxes by a detector pass: OpenCV's Haar cascade on drawn faces, and the cached sidecar it writes."""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest
from PIL import Image

from ferfast.data.base import BOX_SIDECAR, FER7_CLASSES, FaceDataset, load_box_sidecar
from ferfast.data.faces import FaceDetector, detect_faces, import_cv2

HAS_CASCADES = hasattr(cv2, "CascadeClassifier")
needs_cascades = pytest.mark.skipif(
    not HAS_CASCADES,  # the import error itself is tested below
    reason=f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 moved them out; opencv<5 ships them)",
)


def draw_face(size: int, face: float, cx: float = 0.5, cy: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A cartoon frontal face (skin ellipse, eyes, brows, nose, mouth) on a blue background, RGB uint8, and its
    relative xyxy box. ``face`` is the face's width as a fraction of ``size``."""
    img = np.full((size, size, 3), (60, 90, 140), np.uint8)
    fw, fh = face * size, face * size * 1.3
    c = (round(cx * size), round(cy * size))
    cv2.ellipse(img, c, (round(fw / 2), round(fh / 2)), 0, 0, 360, (200, 160, 130), -1)
    thick = max(1, round(fw * 0.03))
    for side in (-1, 1):
        eye = (round(c[0] + side * fw * 0.2), round(c[1] - fh * 0.1))
        cv2.ellipse(img, eye, (round(fw * 0.09), round(fw * 0.05)), 0, 0, 360, (240, 240, 240), -1)
        cv2.circle(img, eye, round(fw * 0.04), (30, 20, 20), -1)
        brow = (
            (round(eye[0] - fw * 0.1), round(eye[1] - fw * 0.1)),
            (round(eye[0] + fw * 0.1), round(eye[1] - fw * 0.12)),
        )
        cv2.line(img, *brow, (60, 40, 30), thick)
    cv2.line(img, (c[0], round(c[1] - fh * 0.02)), (c[0], round(c[1] + fh * 0.12)), (150, 110, 90), thick)
    cv2.ellipse(
        img, (c[0], round(c[1] + fh * 0.25)), (round(fw * 0.18), round(fw * 0.05)), 0, 0, 360, (120, 40, 40), -1
    )
    box = np.array([c[0] - fw / 2, c[1] - fh / 2, c[0] + fw / 2, c[1] + fh / 2]) / size
    return img, np.clip(box, 0, 1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class BrightSquareDetector:
    """A stand-in detector that finds the bounding box of the white pixels (so the box depends on the image)."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        self.calls += 1
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3  # decoded RGB reaches it
        ys, xs = np.nonzero(image.min(axis=2) > 200)
        if len(xs) == 0:
            return None
        h, w = image.shape[:2]
        return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h], np.float32)


def square_image(size: int, box: tuple[int, int, int, int] | None) -> np.ndarray:
    img = np.full((size, size, 3), 40, np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = 255
    return img


def save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # PNG: lossless, so the stand-in's boxes are exact


# -- the real Haar cascade --------------------------------------------------------------------


@needs_cascades
@pytest.mark.parametrize(
    ("size", "face", "grey"),
    [(200, 0.45, False), (100, 0.75, False), (100, 0.5, False), (48, 0.75, True), (64, 0.6, True)],
    ids=["200px-photo", "100px-aligned", "100px-small-face", "48px-grey-aligned", "64px-grey"],
)
def test_haar_cascade_finds_a_drawn_face(size, face, grey):
    img, drawn = draw_face(size, face)
    if grey:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    box = FaceDetector().detect(img)
    assert box is not None
    assert box.dtype == np.float32 and box.shape == (4,) and (box >= 0).all() and (box <= 1).all()
    assert iou(box, drawn) > 0.5


@needs_cascades
def test_haar_cascade_finds_nothing_in_blank_images():
    detector = FaceDetector()
    assert detector.detect(np.full((100, 100, 3), 128, np.uint8)) is None
    assert detector.detect(np.zeros((48, 48), np.uint8)) is None
    assert detector.detect(np.full((30, 40, 4), 255, np.uint8)) is None  # RGBA, odd size


@needs_cascades
def test_haar_detector_bad_inputs_and_cascade_files(tmp_path):
    detector = FaceDetector()
    with pytest.raises(TypeError, match="uint8"):
        detector.detect(np.zeros((48, 48, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((48, 48, 2), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"nope\.xml"):
        FaceDetector(tmp_path / "nope.xml")
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<?xml version='1.0'?><opencv_storage></opencv_storage>")
    with pytest.raises(ValueError, match=r"bogus\.xml"):
        FaceDetector(bogus)


@needs_cascades
def test_detect_faces_with_the_haar_cascade_writes_the_sidecar(tmp_path):
    save(tmp_path / "a" / "face.jpg", draw_face(100, 0.7)[0])
    save(tmp_path / "b" / "blank.png", np.full((100, 100, 3), 90, np.uint8))
    path = detect_faces(tmp_path)
    assert path == tmp_path / BOX_SIDECAR
    boxes = load_box_sidecar(path)
    assert sorted(boxes) == ["a/face.jpg", "b/blank.png"]
    assert iou(boxes["a/face.jpg"], draw_face(100, 0.7)[1]) > 0.5
    assert np.isnan(boxes["b/blank.png"]).all()
    assert "FaceDetector(cascade='haarcascade_frontalface_default.xml'" in path.read_text()


# -- what runs without OpenCV's cascades ------------------------------------------------------


def test_missing_opencv_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 fails
    with pytest.raises(ImportError, match=r"needs OpenCV.*pip install .opencv-python-headless<5."):
        import_cv2()
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="5.0.0"))  # no CascadeClassifier
    with pytest.raises(ImportError, match=r"OpenCV 5\.0\.0 has no Haar cascades.*opencv-python-headless<5"):
        FaceDetector()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale_factor": 1.0}, "scale_factor"),
        ({"min_neighbors": -1}, "min_neighbors"),
        ({"min_size": 0.0}, "min_size"),
        ({"upscale_to": 1.5}, "upscale_to"),
        ({"pad": 2.0}, "pad"),
    ],
)
def test_face_detector_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FaceDetector(**kwargs)


def make_dataset(root, boxes_px: list[tuple[int, int, int, int] | None], split: str = "train", start: int = 0):
    files = []
    for k, box in enumerate(boxes_px):
        name = f"img/{split}_{start + k}.png"
        save(root / name, square_image(50, box))
        files.append(name)
    return FaceDataset(name="t", root=root, split=split, class_names=FER7_CLASSES, files=files)


def test_detect_faces_writes_boxes_and_no_face_rows(tmp_path):
    ds = make_dataset(tmp_path, [(5, 10, 25, 40), None, (0, 0, 50, 50)])
    calls = []
    detector = BrightSquareDetector()
    path = detect_faces(ds, detector=detector, progress=lambda done, total: calls.append((done, total)))
    assert path == tmp_path / BOX_SIDECAR and calls == [(1, 3), (2, 3), (3, 3)]
    boxes = load_box_sidecar(path)
    np.testing.assert_allclose(boxes["img/train_0.png"], [0.1, 0.2, 0.5, 0.8], atol=1e-6)
    assert np.isnan(boxes["img/train_1.png"]).all()
    np.testing.assert_allclose(boxes["img/train_2.png"], [0, 0, 1, 1], atol=1e-6)
    assert "2 of 3 images with a face" in path.read_text()

    # the formats attach the sidecar; an image without a face keeps the whole crop
    assert ds.attach_box_sidecar() == 2
    np.testing.assert_allclose(ds.relative_boxes(0, 50, 50), [0.1, 0.2, 0.5, 0.8], atol=1e-6)
    np.testing.assert_allclose(ds.relative_boxes(1, 50, 50), [0, 0, 1, 1])


def test_detect_faces_is_cached_incremental_and_forced(tmp_path):
    train = make_dataset(tmp_path, [(5, 5, 20, 20), (10, 10, 30, 40)])
    detector = BrightSquareDetector()
    path = detect_faces(train, detector=detector)
    assert detector.calls == 2
    before = path.read_text()
    assert detect_faces(train, detector=detector) == path
    assert detector.calls == 2 and path.read_text() == before  # cached: nothing recomputed or rewritten

    test = make_dataset(tmp_path, [(0, 0, 10, 10)], split="test")
    detect_faces([train, test], detector=detector)
    assert detector.calls == 3  # only the new image
    assert sorted(load_box_sidecar(path)) == ["img/test_0.png", "img/train_0.png", "img/train_1.png"]

    save(tmp_path / "img/train_0.png", square_image(50, None))  # the image changed: force recomputes
    detect_faces(train, detector=detector, force=True)
    assert detector.calls == 5
    boxes = load_box_sidecar(path)
    assert np.isnan(boxes["img/train_0.png"]).all()
    np.testing.assert_allclose(boxes["img/test_0.png"], [0, 0, 0.2, 0.2], atol=1e-6)  # other rows kept


def test_detect_faces_lists_unreadable_images_as_no_face(tmp_path):
    ds = make_dataset(tmp_path, [(5, 5, 20, 20)])
    (tmp_path / "img/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = FaceDataset(
        name="t", root=tmp_path, split="train", class_names=FER7_CLASSES, files=[*ds.files, "img/broken.jpg"]
    )
    with pytest.warns(RuntimeWarning, match=r"1 unreadable image.*img/broken\.jpg"):
        path = detect_faces(ds, detector=BrightSquareDetector())
    boxes = load_box_sidecar(path)
    assert np.isnan(boxes["img/broken.jpg"]).all() and np.isfinite(boxes["img/train_0.png"]).all()


def test_detect_faces_on_a_folder_and_to_another_file(tmp_path):
    save(tmp_path / "faces/x/1.png", square_image(40, (0, 0, 20, 20)))
    save(tmp_path / "faces/2.PNG", square_image(40, None))
    (tmp_path / "faces/notes.txt").write_text("not an image")
    out = detect_faces(tmp_path / "faces", tmp_path / "boxes" / "mine.csv", detector=BrightSquareDetector())
    assert out == tmp_path / "boxes" / "mine.csv" and not (tmp_path / "faces" / BOX_SIDECAR).exists()
    boxes = load_box_sidecar(out)
    assert sorted(boxes) == ["2.PNG", "x/1.png"]
    np.testing.assert_allclose(boxes["x/1.png"], [0, 0, 0.5, 0.5], atol=1e-6)


def test_detect_faces_bad_arguments(tmp_path):
    a = make_dataset(tmp_path / "a", [None])
    b = make_dataset(tmp_path / "b", [None])
    with pytest.raises(ValueError, match="one root"):
        detect_faces([a, b], detector=BrightSquareDetector())
    with pytest.raises(TypeError, match="source"):
        detect_faces(3, detector=BrightSquareDetector())
    with pytest.raises(TypeError, match="source"):
        detect_faces([], detector=BrightSquareDetector())
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect_faces(tmp_path / "nowhere", detector=BrightSquareDetector())
    (tmp_path / "a" / BOX_SIDECAR).write_text("not,a,sidecar\n")
    with pytest.raises(ValueError, match=r"ferfast_boxes\.csv.*force=True"):
        detect_faces(a, detector=BrightSquareDetector())
    detect_faces(a, detector=BrightSquareDetector(), force=True)  # force rewrites a broken sidecar
    assert sorted(load_box_sidecar(tmp_path / "a" / BOX_SIDECAR)) == ["img/train_0.png"]
