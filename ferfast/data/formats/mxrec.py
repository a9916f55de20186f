"""insightface's MXNet RecordIO face collections (``train.rec`` + ``train.idx``: MS1MV2, MS1M-RetinaFace), read
without MXNet.

Framing (dmlc-core RecordIO): each record is ``uint32 magic 0xced7230a``, ``uint32 lrecord`` (``cflag =
lrecord >> 29``, ``length = lrecord & (2**29 - 1)``), ``length`` payload bytes, padding to 4 bytes. The
payload is MXNet's ``IRHeader`` (``<IfQQ``: flag, label, id, id2), then ``flag`` float32 labels when
``flag > 0``, then the encoded image. ``.idx`` lines are ``key<TAB>offset``.

insightface's convention: when record 0's header has ``flag > 0`` it is a meta record and the images are
keys ``1 .. int(label[0]) - 1``; otherwise every key of the ``.idx`` is an image.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np

from ferfast.data.base import FER7_CLASSES
from ferfast.data.formats._common import IdentityDataset, finish_dataset, require_file

__all__ = ["IR_HEADER", "RECORDIO_MAGIC", "MXNetRecord", "read_idx"]

RECORDIO_MAGIC = 0xCED7230A
#: MXNet's image record header: flag, label, id, id2.
IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


def read_idx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The keys and byte offsets of an MXNet ``.idx`` file (``key<TAB>offset`` lines), in file order."""
    tokens = path.read_text(encoding="utf-8").split()
    if len(tokens) % 2:
        raise ValueError(f"{path}: expected 'key<TAB>offset' lines, got an odd number of fields")
    try:
        table = np.array(tokens, dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise ValueError(f"{path}: expected integer 'key<TAB>offset' lines") from None
    if not len(table):
        raise ValueError(f"{path}: no records listed")
    return table[:, 0].copy(), table[:, 1].copy()


class _RecordReader:
    """Reads image payloads from a ``.rec`` file; the file is opened lazily and again in each new process
    (DataLoader workers), so a forked worker never shares a file offset with its parent."""

    def __init__(self, path: Path, offsets: np.ndarray, keys: np.ndarray) -> None:
        self.path = path
        self.offsets = offsets
        self.keys = keys
        self._fh = None
        self._pid = -1
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"], state["_pid"], state["_lock"] = None, -1, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb", buffering=0)
            self._pid = os.getpid()
        return self._fh

    def _pread(self, n: int, offset: int) -> bytes:
        fh = self._file()
        if hasattr(os, "pread"):
            return os.pread(fh.fileno(), n, offset)
        with self._lock:  # pragma: no cover - Windows
            fh.seek(offset)
            return fh.read(n)

    def record(self, key: int, offset: int) -> bytes:
        """The payload of the record at ``offset`` (checked framing)."""
        head = self._pread(8, offset)
        if len(head) < 8:
            raise OSError(f"{self.path}#{key}: truncated record at offset {offset}")
        magic, lrecord = struct.unpack("<II", head)
        if magic != RECORDIO_MAGIC:
            raise ValueError(f"{self.path}#{key}: bad RecordIO magic {magic:#010x} at offset {offset}")
        if lrecord >> 29:
            raise ValueError(f"{self.path}#{key}: multi-part record (cflag {lrecord >> 29}) is not supported")
        length = lrecord & _LENGTH_MASK
        payload = self._pread(length, offset + 8)
        if len(payload) < length:
            raise OSError(f"{self.path}#{key}: truncated record at offset {offset}")
        return payload

    def __call__(self, row: int) -> bytes:
        key = int(self.keys[row])
        payload = self.record(key, int(self.offsets[row]))
        flag = IR_HEADER.unpack_from(payload)[0]
        return payload[IR_HEADER.size + 4 * flag :]


class MXNetRecord(IdentityDataset):
    """An unlabeled face collection in insightface's ``train.rec`` / ``train.idx``, with ``identities``.

    Args:
        root_or_rec: the folder with ``train.rec`` and ``train.idx``, or the ``.rec`` file (its ``.idx``
            lies next to it).
        skip_unreadable: drop the records listed in ``ROOT/ferfast_unreadable.txt``.
        class_names: the label space the unlabeled pool pairs with (labels are all -1).

    ``files`` are ``train.rec#<key>``; ``identities`` are each record's label (``label[0]`` for vector
    labels), the face identity. Multi-part records raise.
    """

    def __init__(
        self, root_or_rec: str | os.PathLike, skip_unreadable: bool = True, class_names: tuple[str, ...] = FER7_CLASSES
    ) -> None:
        path = Path(root_or_rec)
        rec = path / "train.rec" if path.is_dir() else path
        require_file(rec, "MXNet record file")
        idx = require_file(rec.with_suffix(".idx"), "MXNet record index")
        all_keys, all_offsets = read_idx(idx)
        order = np.argsort(all_keys, kind="stable")
        sorted_keys = all_keys[order]
        size = rec.stat().st_size
        if all_offsets.min() < 0 or all_offsets.max() + 8 > size:
            raise ValueError(f"{idx}: offsets beyond the end of {rec} ({size} bytes)")

        def offset_of(keys: np.ndarray) -> np.ndarray:
            pos = np.searchsorted(sorted_keys, keys)
            pos_c = np.minimum(pos, len(sorted_keys) - 1)
            bad = sorted_keys[pos_c] != keys
            if bad.any():
                raise ValueError(f"{idx}: record key {int(keys[bad][0])} is not listed")
            return all_offsets[order[pos_c]]

        mm = np.memmap(rec, dtype=np.uint8, mode="r")
        try:
            meta = self._header(mm, rec, np.array([0]), offset_of(np.array([0])), size) if 0 in all_keys else None
            if meta is not None and meta[0][0] > 0:
                keys = np.arange(1, int(meta[2][0]), dtype=np.int64)
            else:
                keys = all_keys.copy()
            offsets = offset_of(keys)
            _flags, labels, first = self._header(mm, rec, keys, offsets, size)
        finally:
            del mm
        identities = np.where(_flags > 0, first, labels).astype(np.int64)
        super().__init__(
            name="mxrec",
            root=rec.parent,
            split="unlabeled",
            class_names=class_names,
            files=[f"{rec.name}#{k}" for k in keys.tolist()],
            reader=_RecordReader(rec, offsets, keys),
        )
        self.identities = identities
        self.rec_path = rec
        finish_dataset(self, skip_unreadable, attach_sidecar=True)

    @staticmethod
    def _header(
        mm: np.ndarray, rec: Path, keys: np.ndarray, offsets: np.ndarray, size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised scan of the record headers at ``offsets``: (flag, float label, label[0] or NaN)."""

        def gather(at: np.ndarray, dtype: str, chunk: int = 1 << 20) -> np.ndarray:
            parts = [mm[at[i : i + chunk, None] + np.arange(4)] for i in range(0, len(at), chunk)]
            return np.concatenate(parts).view(dtype).reshape(-1) if parts else np.zeros(0, dtype)

        if (offsets + 8 > size).any():
            raise ValueError(f"{rec}: record {int(keys[offsets + 8 > size][0])} lies beyond the end of the file")
        magic = gather(offsets, "<u4")
        if (magic != RECORDIO_MAGIC).any():
            j = int(np.flatnonzero(magic != RECORDIO_MAGIC)[0])
            raise ValueError(
                f"{rec}: bad RecordIO magic {int(magic[j]):#010x} at offset {int(offsets[j])} (record {int(keys[j])}); "
                f"expected {RECORDIO_MAGIC:#010x}: not an MXNet .rec file, or the .idx does not belong to it"
            )
        lrecord = gather(offsets + 4, "<u4")
        if (lrecord >> 29).any():
            j = int(np.flatnonzero(lrecord >> 29)[0])
            raise ValueError(
                f"{rec}: record {int(keys[j])} is a multi-part record (cflag {int(lrecord[j] >> 29)}), "
                "which ferfast does not read; repack it with one record per image"
            )
        length = (lrecord & _LENGTH_MASK).astype(np.int64)
        if (length < IR_HEADER.size).any() or (offsets + 8 + length > size).any():
            j = int(np.flatnonzero((length < IR_HEADER.size) | (offsets + 8 + length > size))[0])
            raise ValueError(f"{rec}: record {int(keys[j])} is truncated or has no IRHeader")
        flag = gather(offsets + 8, "<u4").astype(np.int64)
        label = gather(offsets + 12, "<f4")
        has_vec = flag > 0
        if (IR_HEADER.size + 4 * flag > length).any():
            j = int(np.flatnonzero(IR_HEADER.size + 4 * flag > length)[0])
            raise ValueError(f"{rec}: record {int(keys[j])}: {int(flag[j])} labels do not fit in the record")
        first = np.full(len(keys), np.nan, np.float32)
        if has_vec.any():
            first[has_vec] = gather(offsets[has_vec] + 8 + IR_HEADER.size, "<f4")
        return flag, label, first
