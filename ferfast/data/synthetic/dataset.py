"""Writing synthetic faces as a dataset: RAF-DB basic's layout plus an unlabeled pool, as real JPEG files.

Rendering is :mod:`ferfast.data.synthetic.faces`; :func:`write_synthetic_dataset` plans the
splits (test identities unseen in training, the pool's identities unseen in both), renders chunks
in worker processes with their own seeds, and caches the result by its parameters.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ferfast._io import write_text_atomic
from ferfast.data.base import BOX_SIDECAR, FER7_CLASSES, UNREADABLE_FILE, save_box_sidecar
from ferfast.data.formats.rafdb import RAFDB_CLASSES
from ferfast.data.synthetic.faces import SyntheticFaceConfig, render_faces

__all__ = ["RAFDB_CODES", "SYNTHETIC_FORMAT", "SYNTHETIC_JSON", "write_synthetic_dataset"]

#: Version of the on-disk layout and of the generator; a cached copy is reused only when it matches.
SYNTHETIC_FORMAT = "ferfast.synthetic_faces/1"
#: Written last: its presence (and match) marks a complete dataset.
SYNTHETIC_JSON = "synthetic.json"
#: Per-image metadata (file, split, identity, expression) for analysis and tests.
SYNTHETIC_META = "synthetic_faces.csv"
#: Present while a dataset is being written; marks the folder as the generator's own.
_PARTIAL_MARKER = ".synthetic.partial"
_LABEL_FILE = "EmoLabel/list_patition_label.txt"  # (sic) RAF-DB's spelling
_IMAGE_DIR = "Image/aligned"
_UNLABELED_DIR = "unlabeled"
#: RAF-DB's label code (1-7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral) of each canonical class.
RAFDB_CODES: tuple[int, ...] = tuple(RAFDB_CLASSES.index(name) + 1 for name in FER7_CLASSES)
_CHUNK = 200  # images per work item; each chunk has its own seed, so output does not depend on workers
_RAFDB_TRAIN_COUNTS = np.array([2524, 4772, 1982, 1290, 281, 717, 705], np.float64)


# ---------------------------------------------------------------------------------------------
# writing RAF-DB's layout
# ---------------------------------------------------------------------------------------------
def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 fails only on invalid input
        raise RuntimeError("cv2.imencode failed to encode a synthetic face as JPEG")
    return buf.tobytes()


def _render_chunk(task: dict[str, Any]) -> np.ndarray:
    """Render one chunk with its own seed and write its JPEG files; returns its boxes (runs in a worker)."""
    config = SyntheticFaceConfig(**task["config"])
    rng = np.random.default_rng(task["seed"])
    images, boxes = render_faces(
        len(task["paths"]), identities=task["identities"], expressions=task["expressions"], config=config, rng=rng
    )
    for image, path in zip(images, task["paths"]):
        with open(path, "wb") as fh:
            fh.write(_encode_jpeg(image, config.jpeg_quality))
    return boxes


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"write_synthetic_dataset: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _balanced_labels(n: int, balance: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` canonical labels: exactly balanced (``"uniform"``) or drawn from softened RAF-DB frequencies."""
    if balance == "uniform":
        return rng.permutation(np.arange(n) % len(FER7_CLASSES))
    p = np.sqrt(_RAFDB_TRAIN_COUNTS)
    return rng.choice(len(FER7_CLASSES), size=n, p=p / p.sum())


def _plan(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Who is in which image: identities, expressions and file names of every split (cheap, deterministic)."""
    seed = request["config"]["seed"]
    rng = np.random.default_rng([seed, 1])
    n_train, n_test, n_unl = request["num_train"], request["num_test"], request["num_unlabeled"]
    n_ids, n_uids = request["num_identities"], request["num_unlabeled_identities"]
    n_test_ids = min(n_ids - 1, max(1, round(n_ids * n_test / (n_train + n_test))))
    n_train_ids = n_ids - n_test_ids
    train_ids = rng.permutation(np.arange(n_train) % n_train_ids)
    test_ids = n_train_ids + rng.permutation(np.arange(n_test) % n_test_ids)
    train_expr = _balanced_labels(n_train, request["class_balance"], rng)
    test_expr = _balanced_labels(n_test, request["class_balance"], rng)
    unl_ids = n_ids + np.sort(np.arange(n_unl) % max(n_uids, 1))
    unl_k = np.arange(n_unl) - np.searchsorted(unl_ids, unl_ids)  # image number within its identity
    unl_expr = rng.integers(0, len(FER7_CLASSES), n_unl)
    return {
        "train": {
            "identities": train_ids,
            "expressions": train_expr,
            "stems": [f"train_{i:05d}" for i in range(1, n_train + 1)],
        },
        "test": {
            "identities": test_ids,
            "expressions": test_expr,
            "stems": [f"test_{i:04d}" for i in range(1, n_test + 1)],
        },
        "unlabeled": {
            "identities": unl_ids,
            "expressions": unl_expr,
            "files": [f"{i:05d}/{k:04d}.jpg" for i, k in zip(unl_ids.tolist(), unl_k.tolist())],
        },
    }


def _split_files(plan: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Every image file of each split, relative to the dataset root."""
    return {
        "train": [f"{_IMAGE_DIR}/{s}_aligned.jpg" for s in plan["train"]["stems"]],
        "test": [f"{_IMAGE_DIR}/{s}_aligned.jpg" for s in plan["test"]["stems"]],
        "unlabeled": [f"{_UNLABELED_DIR}/{f}" for f in plan["unlabeled"]["files"]],
    }


def _is_complete(out: Path, request: dict[str, Any]) -> bool:
    """Whether ``out`` holds a finished dataset made with exactly ``request`` (its json, and every file)."""
    meta_path = out / SYNTHETIC_JSON
    if not meta_path.is_file() or (out / _PARTIAL_MARKER).exists():
        return False
    try:
        recorded = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("request") != request:
        return False
    needed = [_LABEL_FILE, BOX_SIDECAR, SYNTHETIC_META]
    if request["num_unlabeled"]:
        needed.append(f"{_UNLABELED_DIR}/{BOX_SIDECAR}")
    files = _split_files(_plan(request))
    needed += files["train"] + files["test"] + files["unlabeled"]
    return all((out / f).is_file() for f in needed)


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def write_synthetic_dataset(
    out: str | os.PathLike,
    *,
    num_train: int = 6000,
    num_test: int = 1500,
    num_unlabeled: int = 10000,
    num_identities: int = 600,
    num_unlabeled_identities: int | None = None,
    class_balance: str = "uniform",
    config: SyntheticFaceConfig | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Path:
    """Write a synthetic FER dataset in RAF-DB basic's layout plus an unlabeled face pool; returns ``out``.

    Layout under ``out``::

        EmoLabel/list_patition_label.txt     # (sic) "train_00001.jpg 5" ... "test_0001.jpg 3", RAF-DB codes 1-7
        Image/aligned/train_00001_aligned.jpg, test_0001_aligned.jpg   # size x size aligned crops
        ferfast_boxes.csv                    # face boxes of the aligned images (relative xyxy)
        unlabeled/<identity:05d>/<k:04d>.jpg # the unlabeled pool, one folder per identity
        unlabeled/ferfast_boxes.csv          # its face boxes (files relative to unlabeled/)
        synthetic_faces.csv                  # file,split,identity,expression of every image
        synthetic.json                       # the request (config, counts, seed, format); written last

    Args:
        num_train, num_test: labeled images; their labels are exactly balanced over the 7 classes
            (``class_balance="uniform"``) or drawn with a mild RAF-DB-like imbalance
            (``"rafdb"``: probabilities proportional to the square root of RAF-DB's training counts).
        num_unlabeled: images of the unlabeled pool (any expression, uniformly drawn).
        num_identities: people in the labeled set; test identities (a share proportional to
            ``num_test``) are disjoint from train identities, as in real FER test splits.
        num_unlabeled_identities: people of the unlabeled pool (default ``num_unlabeled // 10``),
            disjoint from the labeled set's people.
        config: how the faces look; its ``seed`` seeds everything, so the output is a deterministic
            function of the arguments (not of ``workers``).
        workers: processes (spawn) rendering chunks in parallel; 1 renders in this process; default:
            the CPUs available, at most 8. A script that starts workers needs the usual
            ``if __name__ == "__main__":`` guard of spawned processes.
        progress: called as ``progress(n_done, n_total)`` after each chunk of images.

    Caching: if ``out/synthetic.json`` records the same request and every file exists, nothing is
    written and ``out`` is returned at once. Otherwise the generator's earlier output in ``out`` is
    removed and the dataset written again; ``synthetic.json`` is written last, so a killed run is
    never taken for a complete one. A non-empty ``out`` that the generator did not make is refused.
    """
    out = Path(out)
    config = SyntheticFaceConfig() if config is None else config
    if not isinstance(config, SyntheticFaceConfig):
        raise TypeError(f"write_synthetic_dataset: config must be a SyntheticFaceConfig, got {type(config).__name__}")
    num_train = _check_count("num_train", num_train, 1)
    num_test = _check_count("num_test", num_test, 1)
    num_unlabeled = _check_count("num_unlabeled", num_unlabeled, 0)
    num_identities = _check_count("num_identities", num_identities, 2)
    if num_unlabeled_identities is None:
        num_unlabeled_identities = max(1, num_unlabeled // 10)
    num_unlabeled_identities = _check_count("num_unlabeled_identities", num_unlabeled_identities, 1)
    if class_balance not in ("uniform", "rafdb"):
        raise ValueError(f"write_synthetic_dataset: class_balance must be 'uniform' or 'rafdb', got {class_balance!r}")
    if workers is None:
        workers = _default_workers()
    workers = _check_count("workers", workers, 1)
    if progress is not None and not callable(progress):
        raise TypeError(f"write_synthetic_dataset: progress must be callable or None, got {progress!r}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"write_synthetic_dataset: out={out} exists and is not a folder")

    request = {
        "format": SYNTHETIC_FORMAT,
        "config": config.to_dict(),
        "num_train": num_train,
        "num_test": num_test,
        "num_unlabeled": num_unlabeled,
        "num_identities": num_identities,
        "num_unlabeled_identities": num_unlabeled_identities,
        "class_balance": class_balance,
    }
    request = json.loads(json.dumps(request))  # the form it takes in synthetic.json
    if _is_complete(out, request):
        return out

    ours = (out / SYNTHETIC_JSON).exists() or (out / _PARTIAL_MARKER).exists()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise FileExistsError(
            f"write_synthetic_dataset: out={out} is not empty and holds no {SYNTHETIC_JSON}; "
            "refusing to write a synthetic dataset over other files"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / _PARTIAL_MARKER, json.dumps(request) + "\n")
    (out / SYNTHETIC_JSON).unlink(missing_ok=True)
    for stale in (_IMAGE_DIR, _UNLABELED_DIR, "EmoLabel"):
        shutil.rmtree(out / stale, ignore_errors=True)
    for stale in (BOX_SIDECAR, SYNTHETIC_META, UNREADABLE_FILE):  # an old unreadable list names old files
        (out / stale).unlink(missing_ok=True)

    plan = _plan(request)
    files = _split_files(plan)
    (out / _IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    for f in sorted({str(Path(f).parent) for f in files["unlabeled"]}):
        (out / f).mkdir(parents=True, exist_ok=True)

    tasks: list[dict[str, Any]] = []
    for split_code, split in enumerate(("train", "test", "unlabeled")):
        ids, expr, paths = plan[split]["identities"], plan[split]["expressions"], files[split]
        for c, start in enumerate(range(0, len(paths), _CHUNK)):
            stop = start + _CHUNK
            tasks.append(
                {
                    "split": split,
                    "start": start,
                    "seed": [config.seed, 2, split_code, c],
                    "config": request["config"],
                    "identities": ids[start:stop],
                    "expressions": expr[start:stop],
                    "paths": [str(out / f) for f in paths[start:stop]],
                }
            )
    total = sum(len(f) for f in files.values())
    boxes = {split: np.zeros((len(files[split]), 4), np.float32) for split in files}
    done = 0

    def finish(task: dict[str, Any], result: np.ndarray) -> None:
        nonlocal done
        boxes[task["split"]][task["start"] : task["start"] + len(result)] = result
        done += len(result)
        if progress is not None:
            progress(done, total)

    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_render_chunk, task): task for task in tasks}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
    else:
        for task in tasks:
            finish(task, _render_chunk(task))

    labels = [
        f"{stem}.jpg {RAFDB_CODES[int(e)]}"
        for split in ("train", "test")
        for stem, e in zip(plan[split]["stems"], plan[split]["expressions"])
    ]
    write_text_atomic(out / _LABEL_FILE, "\n".join(labels) + "\n")
    comment = f"face outline boxes of ferfast synthetic faces ({SYNTHETIC_FORMAT}, seed {config.seed})"
    save_box_sidecar(
        out / BOX_SIDECAR, files["train"] + files["test"], np.concatenate([boxes["train"], boxes["test"]]), comment
    )
    if num_unlabeled:
        save_box_sidecar(out / _UNLABELED_DIR / BOX_SIDECAR, plan["unlabeled"]["files"], boxes["unlabeled"], comment)
    rows = ["file,split,identity,expression"]
    for split in ("train", "test", "unlabeled"):
        for f, i, e in zip(files[split], plan[split]["identities"].tolist(), plan[split]["expressions"].tolist()):
            rows.append(f"{f},{split},{i},{FER7_CLASSES[e]}")
    write_text_atomic(out / SYNTHETIC_META, "\n".join(rows) + "\n")
    record = {
        "format": SYNTHETIC_FORMAT,
        "seed": config.seed,
        "class_names": list(FER7_CLASSES),
        "counts": {split: len(f) for split, f in files.items()},
        "request": request,
    }
    write_text_atomic(out / SYNTHETIC_JSON, json.dumps(record, indent=2) + "\n")
    (out / _PARTIAL_MARKER).unlink(missing_ok=True)
    return out
