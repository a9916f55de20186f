"""The demo's pictures, drawn with PIL (no plotting library): the ablation as a bar chart, and an MAE's
reconstructions of a few test faces (original / masked / reconstruction), so a run can be looked at, not only read.

Both PNGs are written atomically (:func:`ferfast._io.write_atomic`), like every file ferfast writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as F

from ferfast._draw import draw_text, fit_text, load_font, png_path, save_png
from ferfast.data.augment import FACE_MEAN, FACE_STD
from ferfast.data.check import decode_rgb
from ferfast.data.normalize import normalize_images
from ferfast.demo_results import ARMS

if TYPE_CHECKING:
    from ferfast.data.base import FaceDataset
    from ferfast.demo_results import DemoResult

__all__ = [
    "ARM_COLOURS",
    "CEILING_COLOUR",
    "GRID_ROWS",
    "RESULTS_SIZE",
    "Reconstruction",
    "grid_cell_box",
    "reconstruct",
    "reconstruction_grid",
    "reconstruction_grid_size",
    "sample_faces",
    "save_reconstruction_png",
    "save_results_png",
]

#: (width, height) of :func:`save_results_png`'s chart.
RESULTS_SIZE: tuple[int, int] = (800, 480)
#: each arm's bar colour (``tab10``, its grey tinted so that no anti-aliased text pixel matches a bar's colour)
ARM_COLOURS: dict[str, tuple[int, int, int]] = {
    "scratch": (150, 150, 166),
    "pretrain": (31, 119, 180),
    "mixup": (44, 160, 44),
    "semisup": (255, 127, 14),
    "full": (148, 103, 189),
}
#: the dashed line of the fully supervised ceiling
CEILING_COLOUR: tuple[int, int, int] = (214, 39, 40)
_DOT = (20, 20, 20)
_GRID = (225, 225, 225)
_AXIS = (90, 90, 90)
#: the chart's plot area: margins left, top, right, bottom (pixels)
_MARGINS = (56, 56, 16, 48)

#: the reconstruction grid's rows, top to bottom
GRID_ROWS: tuple[str, ...] = ("original", "masked", "reconstruction")
_LABEL_W, _TITLE_H, _PAD = 104, 24, 4
_MASK_GREY = (128, 128, 128)


# ------------------------------------------------------------------------------------------------ the results chart


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, lines: int = 2) -> list[str]:
    """``text`` broken at spaces into at most ``lines`` lines of ``width`` pixels (the last one cut to fit)."""
    out: list[str] = []
    for word in text.split():
        if out and draw.textlength(out[-1] + " " + word, font=font) <= width:
            out[-1] += " " + word
        elif len(out) < lines:
            out.append(word)
        else:
            out[-1] += " " + word
    return [fit_text(draw, line, font, width) for line in out]


def _dashed(draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, colour: tuple[int, int, int]) -> None:
    for x in range(x0, x1, 12):
        draw.line((x, y, min(x + 7, x1), y), fill=colour, width=2)


def save_results_png(result: DemoResult, path: str | os.PathLike) -> Path:
    """Draw the ablation as a bar chart (mean accuracy per arm, each seed a dot, the ceiling dashed), atomically.

    Arms that did not run are left out; without the ``full`` arm there is no ceiling line. Returns ``path``.
    """
    path = png_path(path)
    arms = [a for a in ARMS if result.scores(a.key)]
    if not arms:
        raise ValueError("result has no rows: nothing to draw")
    width, height = RESULTS_SIZE
    left, top, right, bottom = _MARGINS
    x_end, y_end = width - right, height - bottom
    plot_h = y_end - top

    def y_of(acc: float) -> int:
        return round(y_end - min(max(acc, 0.0), 1.0) * plot_h)

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    title_font, font, small = load_font(16), load_font(12), load_font(11)
    seeds = ", ".join(map(str, result.seeds))
    title = (
        f"SSFER ablation on synthetic faces: {result.labeled_fraction:.0%} of the labels, "
        f"seed{'s' if len(result.seeds) > 1 else ''} {seeds}"
    )
    draw_text(draw, (width // 2, 10), fit_text(draw, title, title_font, width - 20), title_font, "black", "mt")
    draw_text(draw, (width // 2, 32), "test accuracy: bar = mean over seeds, dot = one seed", small, _AXIS, "mt")
    for k in range(11):  # gridlines every 10%, tick labels every 20%
        y = y_of(k / 10)
        draw.line((left, y, x_end, y), fill=_GRID if k else _AXIS, width=1)
        if k % 2 == 0:
            draw_text(draw, (left - 6, y), f"{k * 10}%", font, "black", "rm")
    draw.line((left, top, left, y_end), fill=_AXIS, width=1)

    slot = (x_end - left) / len(arms)
    bar_w = max(8, round(slot * 0.6))
    for i, arm in enumerate(arms):
        cx = round(left + (i + 0.5) * slot)
        x0, x1 = cx - bar_w // 2, cx - bar_w // 2 + bar_w - 1
        mean = result.mean(arm.key)
        if y_of(mean) < y_end:
            draw.rectangle((x0, y_of(mean), x1, y_end - 1), fill=ARM_COLOURS.get(arm.key, (100, 100, 100)))
        scores = result.scores(arm.key)
        draw_text(draw, (cx, y_of(max(mean, *scores)) - 7), f"{mean:.1%}", font, "black", "mb")
        for j, acc in enumerate(scores):  # the seeds side by side across the bar's middle half
            dx = 0 if len(scores) == 1 else round((j / (len(scores) - 1) - 0.5) * bar_w / 2)
            y = y_of(acc)
            draw.ellipse((cx + dx - 4, y - 4, cx + dx + 4, y + 4), fill=_DOT, outline="white")
        for k, line in enumerate(_wrap(draw, arm.label, font, slot - 6)):
            draw_text(draw, (cx, y_end + 8 + 16 * k), line, font, "black", "mt")
    if result.scores("full"):
        ceiling = result.mean("full")
        y = y_of(ceiling)
        _dashed(draw, left + 1, x_end, y, CEILING_COLOUR)
        draw_text(draw, (left + 4, y - 4), f"fully supervised ceiling {ceiling:.1%}", small, CEILING_COLOUR, "lb")
    return save_png(img, path)


# ------------------------------------------------------------------------------------------------ MAE reconstructions


@dataclass
class Reconstruction:
    """An MAE's reconstruction of a batch, as RGB images ``[B, H, W, 3]`` uint8, and the mask ``[B, gh, gw]``
    (True: the patch was masked, i.e. hidden from the encoder and predicted by the decoder)."""

    original: np.ndarray
    masked: np.ndarray
    reconstruction: np.ndarray
    mask: np.ndarray
    patch_size: int
    mask_ratio: float


def _to_rgb(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images ``[B, 3, H, W]`` back to uint8 RGB ``[B, H, W, 3]``."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    rgb = (x.detach().float().cpu() * s + m).clamp(0.0, 1.0)
    return (rgb * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def reconstruct(
    mae: nn.Module,
    imgs: Tensor,
    *,
    mask_ratio: float = 0.75,
    seed: int = 0,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
) -> Reconstruction:
    """Mask ``imgs`` (normalised ``[B, 3, H, W]``) with noise from a generator seeded by ``seed``, run ``mae`` on
    them (eval mode, no grad) and return the original, the masked input and the reconstruction as RGB.

    The reconstruction is MAE's visualisation: the visible patches of the original, the prediction pasted in the
    masked ones. With ``norm_pix_loss`` the prediction is in per-patch normalised units and is mapped back with
    each original patch's mean and (unbiased) variance, as MAE's loss defines them.
    """
    from ferfast.reference.masking import patchify_ref
    from ferfast.reference.patch_loss import NORM_PIX_EPS

    if not isinstance(imgs, Tensor) or imgs.ndim != 4 or imgs.shape[1] != 3 or imgs.shape[0] < 1:
        shape = list(imgs.shape) if isinstance(imgs, Tensor) else type(imgs).__name__
        raise ValueError(f"imgs must be normalised RGB images [B, 3, H, W] with B >= 1, got {shape}")
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 values (RGB) with std > 0, got {mean}, {std}")
    for name in ("forward_encoder", "forward_decoder", "unpatchify", "patch_embed"):
        if not hasattr(mae, name):
            raise TypeError(f"mae must be a MaskedAutoencoderViT, got {type(mae).__name__} (no {name})")
    p = int(mae.patch_size)
    gh, gw = mae.patch_embed.grid_size
    param = next(mae.parameters())
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(imgs.shape[0], gh * gw, generator=generator).to(param.device)
    was_training = mae.training
    mae.eval()
    try:
        with torch.no_grad():
            x = imgs.to(device=param.device, dtype=param.dtype)
            latent, mask, ids_restore = mae.forward_encoder(x, mask_ratio, noise)
            pred = mae.forward_decoder(latent, ids_restore).float()
            x = x.float()
            if getattr(mae, "norm_pix_loss", False):
                target = patchify_ref(x, p)
                mu, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
                pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mu
            y = mae.unpatchify(pred)
            hidden = mask.bool().view(-1, 1, gh, 1, gw, 1).expand(-1, 1, gh, p, gw, p).reshape(-1, 1, gh * p, gw * p)
            pasted = torch.where(hidden, y, x)
    finally:
        mae.train(was_training)
    original = _to_rgb(x, mean, std)
    masked = original.copy()
    masked[hidden[:, 0].cpu().numpy()] = _MASK_GREY
    return Reconstruction(
        original=original,
        masked=masked,
        reconstruction=_to_rgb(pasted, mean, std),
        mask=mask.bool().view(-1, gh, gw).cpu().numpy(),
        patch_size=p,
        mask_ratio=float(mask_ratio),
    )


def _default_scale(image_size: int) -> int:
    return max(1, math.ceil(128 / image_size))  # a face at least 128 pixels wide


def reconstruction_grid_size(num_faces: int, image_size: int, scale: int) -> tuple[int, int]:
    """(width, height) of the grid of ``num_faces`` columns and :data:`GRID_ROWS` rows of ``image_size`` faces."""
    cell = image_size * scale
    return _LABEL_W + num_faces * (cell + _PAD) + _PAD, _TITLE_H + len(GRID_ROWS) * (cell + _PAD) + _PAD


def grid_cell_box(row: int, col: int, image_size: int, scale: int) -> tuple[int, int, int, int]:
    """The pixel box ``(left, top, right, bottom)`` (right/bottom exclusive) of face ``col`` in row ``row``."""
    cell = image_size * scale
    x0, y0 = _LABEL_W + col * (cell + _PAD) + _PAD, _TITLE_H + row * (cell + _PAD) + _PAD
    return x0, y0, x0 + cell, y0 + cell


def reconstruction_grid(rec: Reconstruction, scale: int | None = None, title: str | None = None) -> Image.Image:
    """The grid image: one column per face, rows original / masked / reconstruction, faces upscaled ``scale``
    times (nearest; default: at least 128 pixels wide)."""
    b, h, w, _ = rec.original.shape
    if h != w:
        raise ValueError(f"the grid draws square faces, got {h}x{w}")
    scale = _default_scale(h) if scale is None else scale
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    img = Image.new("RGB", reconstruction_grid_size(b, h, scale), "white")
    draw = ImageDraw.Draw(img)
    font = load_font(12)
    title = title if title is not None else f"MAE reconstructions, {rec.mask_ratio:.0%} of the patches masked"
    draw.text((_PAD, 5), fit_text(draw, title, font, img.width - 2 * _PAD), fill="black", font=font)
    labels = {"masked": f"masked ({rec.mask_ratio:.0%})"}
    for r, (name, faces) in enumerate(zip(GRID_ROWS, (rec.original, rec.masked, rec.reconstruction), strict=True)):
        _, top, _, bottom = grid_cell_box(r, 0, h, scale)
        y_mid = (top + bottom) // 2
        draw_text(
            draw, (_PAD, y_mid), fit_text(draw, labels.get(name, name), font, _LABEL_W - 2 * _PAD), font, "black", "lm"
        )
        for c in range(b):
            face = Image.fromarray(faces[c]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            img.paste(face, grid_cell_box(r, c, h, scale)[:2])
    return img


def save_reconstruction_png(
    mae: nn.Module,
    imgs: Tensor,
    path: str | os.PathLike,
    *,
    mask_ratio: float = 0.75,
    seed: int = 0,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
    scale: int | None = None,
    title: str | None = None,
) -> Reconstruction:
    """:func:`reconstruct` ``imgs`` and write :func:`reconstruction_grid` to ``path`` (a .png), atomically."""
    path = png_path(path)
    rec = reconstruct(mae, imgs, mask_ratio=mask_ratio, seed=seed, mean=mean, std=std)
    save_png(reconstruction_grid(rec, scale, title), path)
    return rec


def sample_faces(
    dataset: FaceDataset,
    count: int,
    image_size: int,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
) -> Tensor:
    """``count`` images spread evenly over ``dataset`` as the evaluation sees them: decoded like every loader
    (:func:`~ferfast.data.check.decode_rgb`), the whole image resized to ``image_size`` (bicubic, antialiased),
    normalised (:func:`~ferfast.data.normalize.normalize_images`); ``[count, 3, image_size, image_size]`` (fewer if
    the dataset is smaller)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name} ({dataset.split}) has no images")
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(np.int64))
    faces = []
    for i in indices:
        rgb = torch.from_numpy(decode_rgb(dataset.read_bytes(int(i)), str(dataset.path(int(i))))).permute(2, 0, 1)
        faces.append(F.resize(rgb, [image_size, image_size], F.InterpolationMode.BICUBIC, antialias=True))
    return normalize_images(torch.stack(faces), mean, std).contiguous()
