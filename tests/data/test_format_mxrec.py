"""insightface's MXNet train.rec / train.idx read without MXNet: framing, meta record, identities, lazy per-process
file handles. The fixture is written by a small RecordIO packer that follows dmlc-core's framing."""

import io
import os
import pickle
import struct

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ferfast.data.base import BOX_SIDECAR, UNREADABLE_FILE, save_box_sidecar
from ferfast.data.formats import MXNetRecord

MAGIC = 0xCED7230A


def pack_record(payload: bytes, cflag: int = 0) -> bytes:
    """One RecordIO record: magic, lrecord = cflag << 29 | length, payload, zero padding to 4 bytes."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def ir_payload(label, image: bytes = b"", id_: int = 0) -> bytes:
    """MXNet's IRHeader ``<IfQQ`` (flag, label, id, id2), the float32 label vector when flag > 0, the image."""
    if np.isscalar(label):
        return struct.pack("<IfQQ", 0, float(label), id_, 0) + image
    vec = np.asarray(label, np.float32)
    return struct.pack("<IfQQ", len(vec), 0.0, id_, 0) + vec.tobytes() + image


def encoded_face(i: int) -> bytes:
    """A small real image whose encoded length varies (so padding is exercised): PNG of noise, or JPEG."""
    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 256, size=(12 + i, 9 + 2 * i, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG" if i % 2 else "JPEG", quality=90)
    return buf.getvalue()


def write_rec(folder, records, name="train"):
    """Write ``name.rec`` / ``name.idx`` for ``{key: payload}`` (keys in the given order)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, blob = [], b""
    for key, payload in records.items():
        lines.append(f"{key}\t{len(blob)}\n")
        blob += pack_record(payload)
    (folder / f"{name}.rec").write_bytes(blob)
    (folder / f"{name}.idx").write_text("".join(lines))
    return folder / f"{name}.rec"


IDENTITIES = [0, 0, 1, 2, 2, 2, 1]


def ms1m_records():
    """insightface's MS1M layout: meta record 0 (label = [N+1, N+1+ids]), images 1..N, identity range records."""
    n, ids = len(IDENTITIES), max(IDENTITIES) + 1
    images = {k: encoded_face(k) for k in range(1, n + 1)}
    records = {0: ir_payload([n + 1, n + 1 + ids])}
    for k in range(1, n + 1):
        ident = IDENTITIES[k - 1]
        label = [ident, 0.0] if k % 3 == 0 else ident  # both scalar and vector labels occur
        records[k] = ir_payload(label, images[k], id_=k)
    for j in range(ids):  # identity records: [first image key, end key): not images
        first = 1 + IDENTITIES.index(j)
        records[n + 1 + j] = ir_payload([first, first + IDENTITIES.count(j)])
    return records, images


def test_meta_record_images_and_identities(tmp_path):
    records, images = ms1m_records()
    assert any(len(p) % 4 for p in records.values())  # padding is exercised
    write_rec(tmp_path, records)
    ds = MXNetRecord(tmp_path)
    assert isinstance(ds, MXNetRecord) and len(ds) == len(IDENTITIES)
    assert ds.files == [f"train.rec#{k}" for k in range(1, len(IDENTITIES) + 1)]
    assert ds.identities.tolist() == IDENTITIES and ds.num_identities == 3
    assert (ds.labels == -1).all() and ds.split == "unlabeled" and ds.root == tmp_path
    for i in range(len(ds)):
        data = ds.read_bytes(i)
        assert data == images[i + 1]
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (12 + i + 1, 9 + 2 * (i + 1), 3)
    assert MXNetRecord(tmp_path / "train.rec").files == ds.files  # the .rec path works as well


def test_without_meta_record_every_key_is_an_image(tmp_path):
    images = {k: encoded_face(k) for k in (0, 1, 2, 3)}
    records = {k: ir_payload(float(10 + k), images[k]) for k in (2, 0, 3, 1)}  # .idx order kept
    rec = write_rec(tmp_path, records, name="faces")
    ds = MXNetRecord(rec)
    assert ds.files == ["faces.rec#2", "faces.rec#0", "faces.rec#3", "faces.rec#1"]
    assert ds.identities.tolist() == [12, 10, 13, 11]
    assert [ds.read_bytes(i) for i in range(4)] == [images[k] for k in (2, 0, 3, 1)]


def test_unreadable_list_and_sidecar_keep_identities_aligned(tmp_path):
    records, images = ms1m_records()
    write_rec(tmp_path, records)
    (tmp_path / UNREADABLE_FILE).write_text("train.rec#2\ntrain.rec#5\n")
    save_box_sidecar(tmp_path / BOX_SIDECAR, ["train.rec#3"], np.array([[0.1, 0.2, 0.9, 0.8]]))
    with pytest.warns(UserWarning, match="2 unreadable"):
        ds = MXNetRecord(tmp_path)
    assert type(ds) is MXNetRecord
    assert ds.files == [f"train.rec#{k}" for k in (1, 3, 4, 6, 7)]
    assert ds.identities.tolist() == [IDENTITIES[k - 1] for k in (1, 3, 4, 6, 7)]
    assert ds.read_bytes(1) == images[3] and ds.read_bytes(4) == images[7]
    np.testing.assert_allclose(ds.boxes[1], [0.1, 0.2, 0.9, 0.8], atol=1e-6)
    assert np.isnan(ds.boxes[[0, 2, 3, 4]]).all() and ds.box_units == "relative"


class _Items(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        data = self.ds.read_bytes(i)
        return os.getpid(), self.ds._reader._pid, data


def test_file_handle_reopens_in_workers_and_pickles(tmp_path):
    records, images = ms1m_records()
    write_rec(tmp_path, records)
    ds = MXNetRecord(tmp_path)
    assert ds.read_bytes(0) == images[1]  # the parent opens the file before the workers fork
    assert ds._reader._pid == os.getpid()
    loader = torch.utils.data.DataLoader(
        _Items(ds), batch_size=None, num_workers=2, multiprocessing_context="fork", collate_fn=lambda x: x
    )
    got = list(loader)
    assert [data for _, _, data in got] == [images[k] for k in range(1, len(IDENTITIES) + 1)]
    assert all(worker != os.getpid() and opened == worker for worker, opened, _ in got)
    clone = pickle.loads(pickle.dumps(ds))  # no open file handle travels
    assert clone._reader._fh is None and clone.read_bytes(2) == images[3]
    assert clone.identities.tolist() == IDENTITIES


def _patch(rec, offset, value):
    data = bytearray(rec.read_bytes())
    data[offset : offset + 4] = struct.pack("<I", value)
    rec.write_bytes(bytes(data))


def _offset(folder, key):
    table = dict(line.split("\t") for line in (folder / "train.idx").read_text().splitlines())
    return int(table[str(key)])


def test_bad_magic_raises_naming_the_file(tmp_path):
    records, _ = ms1m_records()
    rec = write_rec(tmp_path, records)
    _patch(rec, _offset(tmp_path, 4), 0xDEADBEEF)
    with pytest.raises(ValueError, match=r"train.rec: bad RecordIO magic 0xdeadbeef .*\(record 4\)"):
        MXNetRecord(tmp_path)


def test_multi_part_record_raises(tmp_path):
    records, _ = ms1m_records()
    rec = write_rec(tmp_path, records)
    length = len(records[3])
    _patch(rec, _offset(tmp_path, 3) + 4, (1 << 29) | length)
    with pytest.raises(ValueError, match=r"train.rec: record 3 is a multi-part record \(cflag 1\)"):
        MXNetRecord(tmp_path)


def test_missing_files_and_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MXNet record file not found: .*train.rec"):
        MXNetRecord(tmp_path)
    records, _ = ms1m_records()
    write_rec(tmp_path, records)
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(line for line in lines if not line.startswith("5\t")) + "\n")
    with pytest.raises(ValueError, match=r"train.idx: record key 5 is not listed"):
        MXNetRecord(tmp_path)
    idx.write_text("0\tzero\n")
    with pytest.raises(ValueError, match=r"train.idx: expected integer"):
        MXNetRecord(tmp_path)
    idx.write_text(f"0\t{(tmp_path / 'train.rec').stat().st_size}\n")
    with pytest.raises(ValueError, match="beyond the end"):
        MXNetRecord(tmp_path)
    idx.unlink()
    with pytest.raises(FileNotFoundError, match=r"MXNet record index not found: .*train.idx"):
        MXNetRecord(tmp_path)
