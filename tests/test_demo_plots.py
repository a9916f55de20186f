"""The demo's pictures: the ablation chart, the MAE reconstruction grid, and their links in results.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ferfast.data.augment import FACE_MEAN, FACE_STD
from ferfast.data.base import FaceDataset
from ferfast.demo import ArmResult, DemoResult, format_table, picture_links
from ferfast.demo_plots import (
    ARM_COLOURS,
    CEILING_COLOUR,
    GRID_ROWS,
    RESULTS_SIZE,
    grid_cell_box,
    reconstruct,
    reconstruction_grid_size,
    sample_faces,
    save_reconstruction_png,
    save_results_png,
)
from ferfast.models import create_model
from ferfast.reference.masking import patchify_ref
from ferfast.reference.patch_loss import norm_pix_target_ref

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(accs: dict[str, tuple[float, ...]], seeds: tuple[int, ...] = (0, 1)) -> DemoResult:
    rows = [ArmResult(arm, s, a[i], a[i], a[i], 10.0, 300) for arm, a in accs.items() for i, s in enumerate(seeds)]
    return DemoResult(rows, {"data": 1.0}, {}, seeds, 0.05)


def _read(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _is(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(img == np.array(colour, dtype=np.uint8), axis=-1)


def _bar(img: np.ndarray, arm: str) -> tuple[int, int, int, int]:
    """The bounding box (x0, y0, x1, y1) of ``arm``'s bar colour, inclusive."""
    ys, xs = np.nonzero(_is(img, ARM_COLOURS[arm]))
    assert xs.size, f"no bar drawn for {arm}"
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


# ------------------------------------------------------------------------------------------------ the results chart


def test_results_chart_bars_dots_and_dashed_ceiling(tmp_path):
    accs = {"scratch": (0.18, 0.20), "pretrain": (0.40, 0.44), "mixup": (0.40, 0.42), "semisup": (0.46, 0.50)}
    accs["full"] = (0.60, 0.68)
    path = save_results_png(_result(accs), tmp_path / "results.png")
    img = _read(path)
    assert (img.shape[1], img.shape[0]) == RESULTS_SIZE
    boxes = {arm: _bar(img, arm) for arm in accs}
    # bars in ARMS order, left to right, all standing on the same baseline
    lefts = [boxes[a][0] for a in ("scratch", "pretrain", "mixup", "semisup", "full")]
    assert lefts == sorted(lefts) and len({b[3] for b in boxes.values()}) == 1
    heights = {arm: b[3] - b[1] + 1 for arm, b in boxes.items()}
    counts = {arm: int(_is(img, c).sum()) for arm, c in ARM_COLOURS.items()}
    assert counts["full"] > counts["semisup"] > counts["pretrain"] > counts["scratch"] > 0
    # heights proportional to the mean accuracy (64% vs 19%)
    assert heights["full"] / heights["scratch"] == pytest.approx(0.64 / 0.19, rel=0.05)
    # each seed a dark dot on its bar: the ceiling's lower seed (60%) sits inside the bar, below its top
    x0, y0, x1, y1 = boxes["full"]
    inside = img[y0 + 3 : y1, x0 : x1 + 1]
    assert (inside.max(axis=-1) < 60).any()
    # the ceiling: a dashed red line across the plot at the height of the full arm's bar top
    line = _is(img, CEILING_COLOUR)
    row = int(np.argmax(line.sum(axis=1)))
    assert abs(row - y0) <= 2
    cols = np.nonzero(line[row])[0]
    assert cols.min() < boxes["scratch"][0] and cols.max() > boxes["full"][0]
    gaps = np.count_nonzero(np.diff(cols) > 1)
    assert gaps >= 20  # dashed, not solid


def test_results_chart_without_ceiling_with_one_seed(tmp_path):
    result = _result({"pretrain": (0.41,), "mixup": (0.39,), "semisup": (0.55,)}, seeds=(7,))
    img = _read(save_results_png(result, tmp_path / "one.png"))
    assert (img.shape[1], img.shape[0]) == RESULTS_SIZE
    assert not _is(img, CEILING_COLOUR).any()  # no `full` arm: no ceiling line
    assert not _is(img, ARM_COLOURS["full"]).any() and not _is(img, ARM_COLOURS["scratch"]).any()
    h = {arm: _bar(img, arm) for arm in ("pretrain", "mixup", "semisup")}
    assert h["semisup"][1] < h["pretrain"][1] < h["mixup"][1]  # a higher accuracy: a higher bar top
    # the three bars fill the plot's width (slots of a third each), not the five slots of a full run
    assert h["semisup"][2] - h["semisup"][0] > 120  # five slots: 87 pixels


def test_results_chart_rejects_bad_input(tmp_path):
    result = _result({"scratch": (0.2,)}, seeds=(0,))
    with pytest.raises(ValueError, match=r"path must .*\.png"):
        save_results_png(result, tmp_path / "results.jpg")
    with pytest.raises(ValueError, match="no rows"):
        save_results_png(DemoResult([], {}, {}, (0,), 0.05), tmp_path / "empty.png")
    assert not (tmp_path / "results.jpg").exists() and not (tmp_path / "empty.png").exists()


# ------------------------------------------------------------------------------------------------ MAE reconstructions


def _faces(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Random RGB images (uint8, and normalised as the loaders normalise)."""
    rgb = np.random.default_rng(seed).integers(10, 246, size=(n, size, size, 3), dtype=np.uint8)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(FACE_MEAN).view(1, 3, 1, 1), torch.tensor(FACE_STD).view(1, 3, 1, 1)
    return (x - mean) / std, rgb


def _pixel_mask(mask: np.ndarray, p: int) -> np.ndarray:
    return np.kron(mask.astype(np.uint8), np.ones((p, p), np.uint8)).astype(bool)


def test_reconstruction_grid_masks_and_pastes(tmp_path):
    torch.manual_seed(0)
    mae = create_model("mae_vit_demo", norm_pix_loss=True)
    imgs, rgb = _faces(2)
    path = tmp_path / "seed1" / "reconstruction.png"
    rec = save_reconstruction_png(mae, imgs, path, mask_ratio=0.75, seed=1, scale=2)
    assert mae.training  # left in the mode it came in
    grid = _read(path)
    assert (grid.shape[1], grid.shape[0]) == reconstruction_grid_size(2, 64, 2)
    assert rec.mask.shape == (2, 8, 8) and (rec.mask.sum(axis=(1, 2)) == 64 - 16).all()  # MAE keeps int(L * 0.25)
    assert np.abs(rec.original.astype(int) - rgb).max() <= 1  # un-normalised back to the input's RGB
    for c in range(2):
        faces = {}
        for r, name in enumerate(GRID_ROWS):  # each cell: the face upscaled x2 (nearest)
            x0, y0, x1, y1 = grid_cell_box(r, c, 64, 2)
            cell = grid[y0:y1, x0:x1]
            assert np.array_equal(cell, np.repeat(np.repeat(cell[::2, ::2], 2, axis=0), 2, axis=1))
            faces[name] = cell[::2, ::2]
        assert np.array_equal(faces["original"], rec.original[c])
        hidden = _pixel_mask(rec.mask[c], 8)
        # masked row: the original exactly where visible, grey exactly in the masked patches' pixels
        same = np.all(faces["masked"] == faces["original"], axis=-1)
        assert np.array_equal(same, ~hidden)
        assert np.all(faces["masked"][hidden] == 128)
        # reconstruction row: the visible patches are the original's, the masked ones the (untrained) prediction
        assert np.array_equal(faces["reconstruction"][~hidden], faces["original"][~hidden])
        assert not np.array_equal(faces["reconstruction"][hidden], faces["original"][hidden])
    # deterministic: the same seed masks the same patches, another seed others
    assert np.array_equal(reconstruct(mae, imgs, seed=1).mask, rec.mask)
    assert not np.array_equal(reconstruct(mae, imgs, seed=2).mask, rec.mask)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_a_perfect_prediction_reconstructs_the_original(norm_pix):
    """With norm_pix_loss the prediction is per-patch normalised: mapped back with the original patch's mean and
    variance, a decoder that predicts its target exactly gives back the original image."""
    mae = create_model("mae_vit_demo", norm_pix_loss=norm_pix)
    imgs, _ = _faces(2, seed=3)
    target = patchify_ref(imgs, 8)
    mae.forward_decoder = lambda latent, ids_restore: norm_pix_target_ref(target) if norm_pix else target
    rec = reconstruct(mae, imgs, seed=0)
    assert np.abs(rec.reconstruction.astype(int) - rec.original.astype(int)).max() <= 1
    assert rec.mask.any()


def test_reconstruction_rejects_bad_input(tmp_path):
    mae = create_model("mae_vit_demo", img_size=32)
    imgs, _ = _faces(1, size=32)
    with pytest.raises(ValueError, match=r"path must .*\.png"):
        save_reconstruction_png(mae, imgs, tmp_path / "grid.jpg")
    with pytest.raises(ValueError, match="imgs"):
        reconstruct(mae, imgs[0])
    with pytest.raises(ValueError, match="mask_ratio"):
        reconstruct(mae, imgs, mask_ratio=1.0)
    with pytest.raises(ValueError, match="seed"):
        reconstruct(mae, imgs, seed=-1)
    with pytest.raises(ValueError, match="scale"):
        save_reconstruction_png(mae, imgs, tmp_path / "grid.png", scale=0)
    with pytest.raises(TypeError, match="mae"):
        reconstruct(torch.nn.Linear(2, 2), imgs)
    assert not any(tmp_path.iterdir())


def test_sample_faces_spreads_and_normalises(tmp_path):
    colours = [(200, 100, 50), (10, 20, 30), (90, 90, 90), (250, 0, 128)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"{i}.png")
    ds = FaceDataset(name="t", root=tmp_path, split="test", class_names=["a"], files=[f"{i}.png" for i in range(4)])
    x = sample_faces(ds, 2, 32)
    assert x.shape == (2, 3, 32, 32)  # resized to the model's size
    rgb = (x * torch.tensor(FACE_STD).view(1, 3, 1, 1) + torch.tensor(FACE_MEAN).view(1, 3, 1, 1)) * 255
    assert torch.allclose(rgb[:, :, 5, 5], torch.tensor([colours[0], colours[3]], dtype=torch.float32), atol=1.0)
    assert sample_faces(ds, 10, 40).shape[0] == 4  # at most the dataset's images
    with pytest.raises(ValueError, match="count"):
        sample_faces(ds, 0, 32)


# ------------------------------------------------------------------------------------------------ results.md


def test_picture_links_and_the_table_line():
    result = _result({"scratch": (0.2, 0.3), "full": (0.6, 0.7)})
    table = format_table(result)
    assert "pictures" not in table and picture_links(result) == ""
    result.pictures = {
        "results": "results.png",
        "reconstruction/seed0": "seed0/reconstruction.png",
        "reconstruction/seed1": "seed1/reconstruction.png",
        "confusion/scratch/seed0": "seed0/scratch/eval/confusion.png",
        "confusion/full/seed1": "seed1/full/eval/confusion.png",
    }
    assert format_table(result).startswith(table)  # the table itself unchanged; one line about the pictures
    assert format_table(result).splitlines()[-1].startswith("pictures: results.png, seed0/reconstruction.png")
    md = picture_links(result)
    links = [line[line.index("](") + 2 : -1] for line in md.splitlines() if line.startswith("![")]
    assert links == [
        "results.png",
        "seed0/reconstruction.png",
        "seed1/reconstruction.png",
        "seed0/scratch/eval/confusion.png",
        "seed1/full/eval/confusion.png",
    ]
    assert result.to_dict()["pictures"] == result.pictures
