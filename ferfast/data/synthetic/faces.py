"""Drawing synthetic faces: identities, expressions, and the vectorised renderer.


ferfast's tests and demo run without the licensed FER datasets on these images. A face is drawn in
a canonical frame (face centre at the origin, half-height about 1, ``v`` pointing down) from two
sets of parameters:

- **identity** features (:class:`FaceIdentities`, drawn once per person by :func:`make_identities`):
  face shape and jaw, skin tone, hair colour/style/hairline, eye spacing and size, iris colour,
  brow thickness and arch, nose length and width, mouth width, lips, and a resting expression;
- **expression** parameters (:data:`EXPRESSION_PARAMS`): a class prototype
  (:data:`EXPRESSION_PROTOTYPES`, canonical FER-7 order) times an intensity (the config's
  ``intensity``, varied per image) plus per-image noise, so neighbouring classes (fear/surprise,
  anger/disgust, sadness/neutral) overlap.

Every part is a signed-distance shape evaluated on the pixel grid for a whole batch at once (numpy
array ops, no per-pixel loops), anti-aliased over one pixel. Pose (roll, yaw, scale, shift),
lighting, background clutter and sensor noise vary per image. The face box is the bounding box of
the face outline (forehead to chin, cheek to cheek; hair excluded) after pose, computed from the
outline curve, so box tracking and face-IoU Mixup have ground truth.

The dataset writer is :mod:`ferfast.data.synthetic.dataset`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from ferfast.data.base import FER7_CLASSES

__all__ = [
    "EXPRESSION_PARAMS",
    "EXPRESSION_PROTOTYPES",
    "FaceIdentities",
    "SyntheticFaceConfig",
    "expression_parameters",
    "make_identities",
    "render_faces",
]


#: The expression parameters, in the column order of :data:`EXPRESSION_PROTOTYPES`.
EXPRESSION_PARAMS: tuple[str, ...] = (
    "mouth_curve",  # mouth corners up (+, smile) or down (-, frown)
    "mouth_open",  # lips parted / jaw dropped (+) or lips pressed thin (-)
    "mouth_width",  # lips stretched sideways (+) or pursed narrower (-)
    "brow_raise",  # both brows lifted (+, forehead lines) or lowered (-)
    "brow_inner",  # inner brow ends up (+, sadness/fear) or pulled down into a V (-, anger; frown lines)
    "eye_open",  # eyes widened, white above the iris (+) or narrowed (-)
    "cheek_raise",  # cheeks pushed up: lower lids raised, cheek highlight, deeper nasolabial folds
    "nose_wrinkle",  # wrinkles on the nose bridge, nostrils raised and flared
    "upper_lip_raise",  # upper lip lifted, showing the upper teeth
)

#: Class prototypes at intensity 1, rows in canonical FER-7 order (``FER7_CLASSES``), columns as
#: :data:`EXPRESSION_PARAMS`. Shared cues make neighbouring classes overlap: surprise and fear both
#: raise brows, widen eyes and open the mouth (fear stretches it and lifts the inner brows); anger
#: and disgust both lower brows and wrinkle the nose (disgust lifts the upper lip); sadness is a
#: weak frown with raised inner brows, close to neutral at low intensity.
EXPRESSION_PROTOTYPES: np.ndarray = np.array(
    [
        # curve  open  width  raise  inner   eye  cheek  nose   lip
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # neutral
        [1.00, 0.35, 0.55, 0.10, 0.00, -0.35, 1.00, 0.00, 0.20],  # happiness
        [-0.80, 0.00, -0.20, -0.15, 0.90, -0.30, 0.00, 0.00, -0.10],  # sadness
        [0.00, 1.00, -0.35, 1.00, 0.25, 0.90, 0.00, 0.00, 0.20],  # surprise
        [-0.35, 0.55, 0.60, 0.70, 0.80, 0.90, 0.00, 0.00, 0.20],  # fear
        [-0.45, 0.15, -0.10, -0.45, -0.25, -0.45, 0.45, 1.00, 1.00],  # disgust
        [-0.30, -0.30, -0.30, -0.80, -1.00, 0.20, 0.00, 0.35, 0.00],  # anger
    ],
    dtype=np.float32,
)
EXPRESSION_PROTOTYPES.setflags(write=False)

_NUM_PARAMS = len(EXPRESSION_PARAMS)
_PARAM_CLIP = 1.8  # expression parameters are clipped to +-this after noise
_HAIR_STYLES = ("none", "short", "long", "fringe")
# RAF-DB basic's training class counts in canonical order (neutral, happiness, sadness, surprise, fear, disgust, anger)

# palettes (RGB in [0, 1])
_SKIN_LIGHT = np.array([0.96, 0.80, 0.69], np.float32)
_SKIN_DARK = np.array([0.33, 0.21, 0.15], np.float32)
_HAIR_PALETTE = np.array(
    [
        [0.08, 0.06, 0.05],  # black
        [0.22, 0.14, 0.09],  # dark brown
        [0.42, 0.28, 0.17],  # brown
        [0.78, 0.64, 0.38],  # blonde
        [0.55, 0.24, 0.12],  # auburn
        [0.62, 0.61, 0.60],  # grey
    ],
    np.float32,
)
_IRIS_PALETTE = np.array(
    [[0.30, 0.18, 0.10], [0.15, 0.09, 0.05], [0.28, 0.45, 0.65], [0.30, 0.45, 0.28], [0.48, 0.36, 0.18]], np.float32
)
_SCLERA = np.array([0.94, 0.93, 0.89], np.float32)
_TEETH = np.array([0.95, 0.93, 0.86], np.float32)
_MOUTH_INSIDE = np.array([0.30, 0.07, 0.09], np.float32)
_PUPIL = np.array([0.03, 0.03, 0.03], np.float32)


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def _check_number(name: str, value: object, lo: float, hi: float, integer: bool = False) -> None:
    """Raise naming ``SyntheticFaceConfig.<name>`` unless ``value`` is a (finite) number in ``[lo, hi]``."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integer else "a number"
        raise TypeError(f"SyntheticFaceConfig.{name} must be {what}, got {value!r}")
    if not (math.isfinite(float(value)) and lo <= value <= hi):  # type: ignore[operator]
        raise ValueError(f"SyntheticFaceConfig.{name} must be in [{lo}, {hi}], got {value!r}")


@dataclass
class SyntheticFaceConfig:
    """How synthetic faces look: image size, expression strength, pose/alignment jitter, lighting, clutter, JPEG.

    Defaults give RAF-DB-like aligned 100x100 crops: the face fills most of the image, shifted by up
    to ``align_jitter`` of the size and rolled by up to ``max_rotation`` degrees (a small ViT from
    scratch stalls on unaligned faces, docs/design.md).
    """

    size: int = 100  #: image height and width in pixels
    intensity: float = 1.0  #: scales the expression prototypes (0 = every class looks neutral)
    intensity_jitter: float = 0.4  #: per-image intensity = intensity * U(1 - j, 1 + j)
    expression_noise: float = 0.2  #: std of per-image Gaussian noise added to each expression parameter
    align_jitter: float = 0.03  #: max shift of the face centre, as a fraction of the image size
    max_rotation: float = 5.0  #: max in-plane rotation (roll), degrees
    max_yaw: float = 10.0  #: max head turn (yaw), degrees; moves the features sideways and the shading
    scale_jitter: float = 0.05  #: face size varies by U(1 - s, 1 + s)
    lighting: float = 1.0  #: strength of directional shading, brightness/contrast and colour-cast changes
    background: float = 1.0  #: background clutter strength (gradients, shapes, texture); 0 = a flat colour
    background_color: tuple[int, int, int] | None = None  #: flat background RGB (0-255); None = random per image
    noise: float = 0.02  #: std of per-pixel sensor noise, as a fraction of 255
    jpeg_quality: int = 90  #: quality of the written JPEG files (1-100)
    seed: int = 0  #: seeds the identity table and every draw of :func:`write_synthetic_dataset`

    def __post_init__(self) -> None:
        _check_number("size", self.size, 16, 4096, integer=True)
        _check_number("intensity", self.intensity, 0.0, 5.0)
        _check_number("intensity_jitter", self.intensity_jitter, 0.0, 1.0)
        _check_number("expression_noise", self.expression_noise, 0.0, 5.0)
        _check_number("align_jitter", self.align_jitter, 0.0, 0.25)
        _check_number("max_rotation", self.max_rotation, 0.0, 45.0)
        _check_number("max_yaw", self.max_yaw, 0.0, 45.0)
        _check_number("scale_jitter", self.scale_jitter, 0.0, 0.5)
        _check_number("lighting", self.lighting, 0.0, 2.0)
        _check_number("background", self.background, 0.0, 1.0)
        _check_number("noise", self.noise, 0.0, 0.5)
        _check_number("jpeg_quality", self.jpeg_quality, 1, 100, integer=True)
        _check_number("seed", self.seed, 0, 2**63 - 1, integer=True)
        if self.background_color is not None:
            color = self.background_color
            if (
                not isinstance(color, (tuple, list))
                or len(color) != 3
                or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
            ):
                raise ValueError(f"SyntheticFaceConfig.background_color must be None or 3 ints in 0-255, got {color!r}")
            self.background_color = tuple(int(c) for c in color)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (what ``synthetic.json`` records)."""
        out = asdict(self)
        if out["background_color"] is not None:
            out["background_color"] = list(out["background_color"])
        return out


# ---------------------------------------------------------------------------------------------
# identities
# ---------------------------------------------------------------------------------------------
@dataclass
class FaceIdentities:
    """Per-identity features (one row per person); an identity keeps them in all its images.

    Lengths are in the canonical face frame (face half-height about 1); colours are RGB in [0, 1].
    """

    face_width: np.ndarray  #: [M] half-width of the face outline
    face_height: np.ndarray  #: [M] half-height of the face outline
    jaw: np.ndarray  #: [M] how much the lower face narrows towards the chin
    skin: np.ndarray  #: [M, 3] skin colour
    hair_color: np.ndarray  #: [M, 3]
    hair_style: np.ndarray  #: [M] int index into ("none", "short", "long", "fringe")
    hairline: np.ndarray  #: [M] height of the hairline at the centre (negative = above the face centre)
    hair_volume: np.ndarray  #: [M] how far the hair stands out from the head
    eye_spacing: np.ndarray  #: [M] horizontal distance of each eye centre from the midline
    eye_size: np.ndarray  #: [M] half-width of the eye opening
    eye_height: np.ndarray  #: [M] vertical offset of the eyes
    iris_color: np.ndarray  #: [M, 3]
    brow_gap: np.ndarray  #: [M] distance between the eye's top and the brow
    brow_thickness: np.ndarray  #: [M]
    brow_arch: np.ndarray  #: [M]
    nose_length: np.ndarray  #: [M] eye line to nose tip
    nose_width: np.ndarray  #: [M] nostril distance from the midline
    mouth_width: np.ndarray  #: [M] half-width of the mouth
    philtrum: np.ndarray  #: [M] nose tip to mouth
    lip_thickness: np.ndarray  #: [M]
    lip_color: np.ndarray  #: [M, 3]
    resting: np.ndarray  #: [M, len(EXPRESSION_PARAMS)] the person's resting expression offset

    def __len__(self) -> int:
        return len(self.face_width)

    def take(self, index: np.ndarray) -> FaceIdentities:
        """The rows ``index`` (one per image) of every feature."""
        return FaceIdentities(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


_IDENTITY_COLUMNS = 32 + _NUM_PARAMS  # uniform draws per identity (fixed, so the table is prefix-stable)


def make_identities(num: int, rng: np.random.Generator) -> FaceIdentities:
    """Draw ``num`` identities. Prefix-stable: identity ``k`` is the same for every ``num > k`` and the same ``rng``.

    All features come from one ``[num, columns]`` block of uniform draws (filled row by row).
    """
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 0:
        raise ValueError(f"make_identities: num must be a non-negative int, got {num!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"make_identities: rng must be a numpy Generator, got {type(rng).__name__}")
    u = rng.random((int(num), _IDENTITY_COLUMNS), dtype=np.float32)
    col = iter(range(_IDENTITY_COLUMNS))

    def uni(lo: float, hi: float) -> np.ndarray:
        return (lo + (hi - lo) * u[:, next(col)]).astype(np.float32)

    tone = u[:, next(col)] ** 1.3
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone[:, None]
    skin = skin * (1.0 + np.stack([uni(-0.04, 0.04), uni(-0.03, 0.03), uni(-0.05, 0.05)], 1))
    hair_idx = np.minimum((u[:, next(col)] * len(_HAIR_PALETTE)).astype(np.int64), len(_HAIR_PALETTE) - 1)
    hair_color = _HAIR_PALETTE[hair_idx] * uni(0.8, 1.2)[:, None]
    style_u = u[:, next(col)]
    hair_style = np.searchsorted(np.array([0.08, 0.50, 0.80]), style_u, side="right").astype(np.int64)
    iris_idx = np.minimum((u[:, next(col)] * len(_IRIS_PALETTE)).astype(np.int64), len(_IRIS_PALETTE) - 1)
    lip_tint = np.array([0.78, 0.42, 0.42], np.float32)
    lip_mix = uni(0.3, 0.6)[:, None]
    out = FaceIdentities(
        face_width=uni(0.72, 0.86),
        face_height=uni(0.94, 1.04),
        jaw=uni(0.05, 0.32),
        skin=np.clip(skin, 0.0, 1.0).astype(np.float32),
        hair_color=np.clip(hair_color, 0.0, 1.0).astype(np.float32),
        hair_style=hair_style,
        hairline=uni(-0.80, -0.55),
        hair_volume=uni(0.03, 0.13),
        eye_spacing=uni(0.27, 0.35),
        eye_size=uni(0.105, 0.135),
        eye_height=uni(-0.04, 0.04),
        iris_color=(_IRIS_PALETTE[iris_idx] * uni(0.8, 1.2)[:, None]).astype(np.float32),
        brow_gap=uni(0.07, 0.11),
        brow_thickness=uni(0.022, 0.045),
        brow_arch=uni(0.0, 0.045),
        nose_length=uni(0.27, 0.36),
        nose_width=uni(0.055, 0.085),
        mouth_width=uni(0.22, 0.29),
        philtrum=uni(0.15, 0.20),
        lip_thickness=uni(0.024, 0.042),
        lip_color=np.clip(
            skin * (1 - lip_mix) + lip_tint * lip_mix * (0.6 + 0.4 * skin.mean(1, keepdims=True)), 0, 1
        ).astype(np.float32),
        resting=np.stack([uni(-0.2, 0.2) for _ in range(_NUM_PARAMS)], 1),
    )
    return out


def expression_parameters(
    expressions: np.ndarray, resting: np.ndarray, config: SyntheticFaceConfig, rng: np.random.Generator
) -> np.ndarray:
    """``[N, len(EXPRESSION_PARAMS)]`` parameters: prototype x per-image intensity + resting offset + noise."""
    expressions = np.asarray(expressions)
    if expressions.ndim != 1 or not np.issubdtype(expressions.dtype, np.integer):
        raise TypeError(f"expression_parameters: expressions must be 1-D integer class indices, got {expressions!r}")
    if expressions.size and (expressions.min() < 0 or expressions.max() >= len(FER7_CLASSES)):
        raise ValueError(f"expression_parameters: expressions must be in [0, {len(FER7_CLASSES)}), got {expressions}")
    n = len(expressions)
    jitter = config.intensity_jitter
    intensity = config.intensity * rng.uniform(1.0 - jitter, 1.0 + jitter, size=n).astype(np.float32)
    noise = rng.standard_normal((n, _NUM_PARAMS), dtype=np.float32) * np.float32(config.expression_noise)
    params = EXPRESSION_PROTOTYPES[expressions] * intensity[:, None] + resting + noise
    return np.clip(params, -_PARAM_CLIP, _PARAM_CLIP).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# drawing helpers: signed distances (negative inside) in canonical units, coverage over one pixel
# ---------------------------------------------------------------------------------------------
def _col(x: np.ndarray | float) -> np.ndarray:
    """A per-image value as ``[N, 1, 1]`` float32, to broadcast against ``[N, H, W]`` grids."""
    return np.asarray(x, np.float32).reshape(-1, 1, 1)


def _ellipse_sd(u: np.ndarray, v: np.ndarray, cu: Any, cv: Any, au: Any, av: Any) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (exact on the boundary, first order near it)."""
    du = (u - cu) / au
    dv = (v - cv) / av
    r = np.sqrt(du * du + dv * dv)
    grad = np.sqrt((du / au) ** 2 + (dv / av) ** 2) / np.maximum(r, 1e-6)
    return (r - 1.0) / np.maximum(grad, 1.0 / np.maximum(au, av))


def _segment_sd(u: np.ndarray, v: np.ndarray, u0: Any, v0: Any, u1: Any, v1: Any, radius: Any) -> np.ndarray:
    """Signed distance to a capsule (the segment ``(u0, v0)-(u1, v1)`` thickened by ``radius``)."""
    du, dv = u1 - u0, v1 - v0
    t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv + 1e-12), 0.0, 1.0)
    return np.sqrt((u - u0 - t * du) ** 2 + (v - v0 - t * dv) ** 2) - radius


def _cover(sd: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Pixel coverage of a shape from its signed distance: 1 inside, 0 outside, linear over one pixel."""
    return np.clip(0.5 - sd / px, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """Composite ``color`` (``[N, 3]`` or ``[N, H, W, 3]``) over ``img`` with ``alpha`` ``[N, H, W]``, in place."""
    if color.ndim == 2:
        color = color[:, None, None, :]
    img += alpha[..., None] * (color - img)


def _darken(img: np.ndarray, alpha: np.ndarray) -> None:
    """Multiply ``img`` by ``1 - alpha`` (shadows, wrinkles), in place."""
    img *= (1.0 - alpha)[..., None]


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _check_index_array(name: str, value: Any, num: int, upper: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"render_faces: {name} must be integer indices, got dtype {arr.dtype}")
    try:
        arr = np.broadcast_to(arr.astype(np.int64), (num,))
    except ValueError:
        raise ValueError(f"render_faces: {name} must be one index per image ({num}), got shape {arr.shape}") from None
    if num and (arr.min() < 0 or (upper is not None and arr.max() >= upper)):
        bound = f"[0, {upper})" if upper is not None else "non-negative"
        raise ValueError(f"render_faces: {name} must be in {bound}, got {int(arr.min())}..{int(arr.max())}")
    return arr


def _face_boxes(
    ident: FaceIdentities, cx: np.ndarray, cy: np.ndarray, scale: np.ndarray, roll: np.ndarray
) -> np.ndarray:
    """Relative xyxy boxes of the face outlines after pose, from 512 points on each outline curve."""
    t = np.linspace(0.0, 2.0 * np.pi, 512, endpoint=False, dtype=np.float32)
    s = np.sin(t)[None]
    a = ident.face_width[:, None] * (1.0 - ident.jaw[:, None] * np.maximum(s, 0.0) ** 2)
    pu = a * np.cos(t)[None]
    pv = ident.face_height[:, None] * s
    cos, sin = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x = cx[:, None] + scale[:, None] * (cos * pu - sin * pv)
    y = cy[:, None] + scale[:, None] * (sin * pu + cos * pv)
    boxes = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)


def _background(n: int, size: int, config: SyntheticFaceConfig, rng: np.random.Generator) -> np.ndarray:
    """``[N, S, S, 3]`` backgrounds: a base colour plus (scaled by ``config.background``) a gradient, shapes and
    texture drawn at a quarter of the resolution and upsampled (an out-of-focus backdrop)."""
    base = rng.uniform(0.12, 0.88, size=(n, 3)).astype(np.float32)
    base = 0.5 * base + 0.5 * base.mean(1, keepdims=True)  # muted colours
    if config.background_color is not None:
        base[:] = np.asarray(config.background_color, np.float32) / 255.0
    k = np.float32(config.background)
    if k == 0:
        return np.broadcast_to(base[:, None, None, :], (n, size, size, 3)).copy()
    low = max(8, size // 4)
    grid = (np.arange(low, dtype=np.float32) + 0.5) / low
    gx, gy = grid[None, None, :], grid[None, :, None]
    img = np.broadcast_to(base[:, None, None, :], (n, low, low, 3)).copy()
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    ramp = _col(np.cos(angle)) * (gx - 0.5) + _col(np.sin(angle)) * (gy - 0.5)
    img += k * ramp[..., None] * rng.uniform(-0.35, 0.35, (n, 1, 1, 3)).astype(np.float32)
    px = np.float32(1.0 / low)
    for _ in range(5):  # random blobs
        cu, cv = rng.uniform(-0.1, 1.1, (2, n, 1, 1)).astype(np.float32)
        au, av = rng.uniform(0.04, 0.35, (2, n, 1, 1)).astype(np.float32)
        color = 0.6 * rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32) + 0.4 * base
        opacity = k * rng.uniform(0.3, 0.9, (n, 1, 1)).astype(np.float32)
        _paint(img, _cover(_ellipse_sd(gx, gy, cu, cv, au, av), px) * opacity, color)
    img += (0.06 * k) * rng.standard_normal((n, low, low, 3), dtype=np.float32)  # texture
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in img])


@dataclass
class _Frame:
    """A (window of the) batch canvas with the pixel grid in the canonical face frame; slices are views."""

    img: np.ndarray  # [N, h, w, 3] float32 RGB in [0, 1], painted in place
    u: np.ndarray  # [N, h, w] canonical coordinates of the pixel centres (head frame)
    v: np.ndarray
    uf: np.ndarray  # u in the feature frame (shifted by yaw)
    face_sd: np.ndarray  # signed distance to the face outline
    face: np.ndarray  # face outline coverage
    px: np.ndarray  # [N, 1, 1] canonical units per pixel
    to_image: tuple[np.ndarray, ...]  # (cx, cy, scale, cos, sin, size, yaw margin) to map canonical -> pixel

    def view(self, v0: Any, v1: Any, umax: Any) -> _Frame:
        """The window of pixels covering ``|uf| <= umax, v0 <= v <= v1`` in every image (per-image bounds)."""
        cx, cy, sc, cos, sin, size, margin = self.to_image
        n = len(cx)
        v0, v1, umax = (np.broadcast_to(np.asarray(x, np.float32).reshape(-1), (n,)) for x in (v0, v1, umax))
        um = umax + margin
        us = np.stack([-um, um, -um, um], 1)
        vs = np.stack([v0, v0, v1, v1], 1)
        x = cx[:, None] + sc[:, None] * (cos[:, None] * us - sin[:, None] * vs)
        y = cy[:, None] + sc[:, None] * (sin[:, None] * us + cos[:, None] * vs)
        c0, c1 = max(0, int(np.floor(x.min() * size)) - 2), min(size, int(np.ceil(x.max() * size)) + 2)
        r0, r1 = max(0, int(np.floor(y.min() * size)) - 2), min(size, int(np.ceil(y.max() * size)) + 2)
        r1, c1 = max(r0, r1), max(c0, c1)
        w = (slice(None), slice(r0, r1), slice(c0, c1))
        return _Frame(
            self.img[w], self.u[w], self.v[w], self.uf[w], self.face_sd[w], self.face[w], self.px, self.to_image
        )


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _draw_skin_marks(fr: _Frame, g: dict[str, np.ndarray], skin: np.ndarray) -> None:
    """Cheek highlights, nasolabial folds, forehead lines and frown lines (wrinkles follow the expression)."""
    cheek_v = g["ny"] - 0.02 - 0.04 * _relu(g["cheek"])
    w = fr.view(cheek_v - 0.15, cheek_v + 0.15, g["ex"] + 0.25)
    cheek_sd = _ellipse_sd(np.abs(w.uf), w.v, g["ex"] + 0.03, cheek_v, 0.13, 0.09)
    alpha = np.clip(0.5 - cheek_sd / 0.08, 0.0, 1.0) * (0.45 * _relu(g["cheek"])) * w.face
    _paint(w.img, alpha, np.clip(skin * np.array([1.12, 1.0, 0.98], np.float32) + 0.05, 0, 1))

    fold_end_v = g["my"] - 0.7 * g["corner"] + 0.03
    w = fr.view(g["ny"] - 0.03, np.maximum(fold_end_v, g["ny"]) + 0.03, g["mw"] + 0.06)
    fold_sd = _segment_sd(np.abs(w.uf), w.v, g["nw"] + 0.045, g["ny"] - 0.01, g["mw"] + 0.035, fold_end_v, 0.011)
    k = np.clip(0.08 + 0.25 * _relu(g["cheek"]) + 0.15 * _relu(g["nose_wrinkle"]) + 0.1 * _relu(g["curve"]), 0, 0.5)
    _darken(w.img, _cover(fold_sd, w.px) * k * w.face)

    brow_v = g["brow_v"]
    w = fr.view(brow_v - 0.26, brow_v - 0.08, 0.3)
    au, v = np.abs(w.uf), w.v
    vq = v - 0.25 * au * au
    k = np.clip(0.3 * _relu(g["brow_raise"]), 0, 0.4) * w.face
    for i in range(3):
        vk = brow_v - 0.11 - 0.065 * i
        _darken(w.img, _cover(_segment_sd(au, vq, 0.0, vk, 0.28, vk, 0.007), w.px) * k)

    inner_v = g["inner_v"]
    w = fr.view(inner_v - 0.03, inner_v + 0.11, 0.05)
    frown_sd = _segment_sd(np.abs(w.uf), w.v, 0.035, inner_v - 0.02, 0.03, inner_v + 0.09, 0.008)
    _darken(w.img, _cover(frown_sd, w.px) * np.clip(0.35 * _relu(-g["brow_inner"]), 0, 0.45) * w.face)


def _draw_nose(fr: _Frame, g: dict[str, np.ndarray], skin: np.ndarray) -> None:
    """Side shading of the bridge, a soft tip shadow, nostrils, and wrinkles on the bridge (disgust)."""
    ey, ny, nw = g["ey"], g["ny"], g["nw"]
    w = fr.view(ey + 0.04, ny + 0.08, nw + 0.06)
    uf, v = w.uf, w.v
    au = np.abs(uf)
    _darken(w.img, _cover(_segment_sd(au, v, 0.05, ey + 0.06, nw * 0.85, ny - 0.04, 0.012), w.px) * 0.12 * w.face)
    tip_sd = _ellipse_sd(uf, v, 0.0, ny + 0.015, nw * 0.9, 0.045)
    _darken(w.img, np.clip(0.5 - tip_sd / 0.04, 0, 1) * 0.12 * w.face)
    nostril_sd = _ellipse_sd(au, v, nw, ny + 0.025, 0.028, 0.016)
    _paint(w.img, _cover(nostril_sd, w.px) * 0.75, skin * 0.3)
    k = np.clip(0.35 * _relu(g["nose_wrinkle"]), 0, 0.5)
    for i in range(2):
        vk = ey + 0.07 + 0.045 * i
        _darken(w.img, _cover(_segment_sd(au, v, 0.0, vk, 0.06, vk - 0.01, 0.006), w.px) * k)


def _draw_eyes(fr: _Frame, g: dict[str, np.ndarray], iris_color: np.ndarray, skin: np.ndarray) -> None:
    """Sclera (upper and lower lids open independently), iris and pupil (with gaze), and the upper lid line."""
    ey, ex, ew = g["ey"], g["ex"], g["ew"]
    eh_up = ew * np.clip(0.45 * (1.0 + 0.6 * g["eye_open"]), 0.06, 0.9)
    eh_lo = ew * np.clip(0.38 * (1.0 + 0.3 * g["eye_open"] - 0.5 * _relu(g["cheek"])), 0.05, 0.7)
    w = fr.view(ey - eh_up - 0.03, ey + eh_lo + 0.03, ex + ew + 0.03)
    uf, v = w.uf, w.v
    au = np.abs(uf)
    n = len(ey)
    eye_sd = _ellipse_sd(au, v, ex, ey, ew, np.where(v < ey, eh_up, eh_lo))
    _paint(w.img, _cover(eye_sd, w.px), np.broadcast_to(_SCLERA, (n, 3)))
    iris_r = ew * 0.52
    iu = ex + np.sign(uf) * g["gaze_u"] * iris_r
    iv = ey + g["gaze_v"] * 0.2 * iris_r
    _paint(w.img, _cover(np.maximum(_ellipse_sd(au, v, iu, iv, iris_r, iris_r), eye_sd), w.px), iris_color)
    pupil_sd = np.maximum(_ellipse_sd(au, v, iu, iv, 0.45 * iris_r, 0.45 * iris_r), eye_sd)
    _paint(w.img, _cover(pupil_sd, w.px), np.broadcast_to(_PUPIL, (n, 3)))
    lid_sd = np.maximum(np.abs(eye_sd) - 0.009, v - ey)
    _paint(w.img, _cover(lid_sd, w.px) * 0.85, skin * 0.25)


def _draw_brows(fr: _Frame, g: dict[str, np.ndarray], ident: FaceIdentities) -> None:
    """Each brow: a tapered, arched capsule from its inner to its outer end (the ends move with the expression)."""
    ex, ew = g["ex"], g["ew"]
    x_in, x_out = ex - 0.9 * ew, ex + 1.25 * ew
    v_in, v_out = g["inner_v"], g["brow_v"] - 0.01 * g["brow_inner"]
    arch, thick = _col(ident.brow_arch), _col(ident.brow_thickness)
    w = fr.view(np.minimum(v_in, v_out) - arch - thick - 0.02, np.maximum(v_in, v_out) + thick + 0.02, x_out + 0.06)
    au, v = np.abs(w.uf), w.v
    t = np.clip((au - x_in) / (x_out - x_in), 0.0, 1.0)
    vc = v_in + (v_out - v_in) * t - arch * 4.0 * t * (1.0 - t)
    brow_sd = np.sqrt((au - (x_in + t * (x_out - x_in))) ** 2 + (v - vc) ** 2) - thick * (1.0 - 0.45 * t)
    brow_color = np.clip(ident.hair_color * 0.7 + 0.05, 0, 1) * 0.8
    _paint(w.img, _cover(brow_sd, w.px), brow_color)


def _draw_mouth(fr: _Frame, g: dict[str, np.ndarray], ident: FaceIdentities) -> None:
    """Lips between the upper and lower lip curves, dark inside when open, upper teeth when open enough."""
    my, mw, corner = g["my"], g["mw"], g["corner"]
    open_amt = 0.17 * _relu(g["mouth_open"]) + 0.05 * _relu(g["lip_raise"])
    lift = 0.35 * open_amt + 0.04 * _relu(g["lip_raise"])
    drop = 0.65 * open_amt
    lip_t = _col(ident.lip_thickness) * np.clip(1.0 + 0.5 * np.minimum(g["mouth_open"], 0.0), 0.3, 1.2)
    reach = 0.65 * np.abs(corner)
    w = fr.view(my - reach - lift - 1.1 * lip_t - 0.03, my + reach + drop + 1.2 * lip_t + 0.03, mw + 0.03)
    uf, v = w.uf, w.v
    x = uf / mw
    q = np.clip(1.0 - x * x, 0.0, 1.0)
    qs = np.sqrt(q)
    centre = my - corner * (x * x - 0.35)
    top = centre - lift * qs
    bot = centre + drop * qs
    x_sd = (np.abs(x) - 1.0) * mw
    lips_sd = np.maximum(np.maximum(top - 1.1 * lip_t * qs - v, v - bot - 1.2 * lip_t * qs), x_sd + 0.01)
    _paint(w.img, _cover(lips_sd, w.px), ident.lip_color)
    n = len(my)
    inside_sd = np.maximum(np.maximum(top - v, v - bot) - 0.006, x_sd + 0.02)
    _paint(w.img, _cover(inside_sd, w.px), np.broadcast_to(_MOUTH_INSIDE, (n, 3)))
    teeth_sd = np.maximum(inside_sd, v - (top + 0.045))
    teeth_k = np.clip(8.0 * (open_amt - 0.01), 0.0, 1.0)
    _paint(w.img, _cover(teeth_sd, w.px) * teeth_k, np.broadcast_to(_TEETH, (n, 3)))


def _draw_hair(fr: _Frame, g: dict[str, np.ndarray], ident: FaceIdentities) -> None:
    """Hair inside a cap around the head: above the hairline on the face, beside it down to the style's bottom."""
    style = ident.hair_style
    a, b = _col(ident.face_width), _col(ident.face_height)
    vol = _col(ident.hair_volume)
    long = _col(style == 2)
    fringe = _col(style == 3)
    bottom = long * 0.95 + (1.0 - long) * (g["ey"] + 0.02)
    cap_a = a + vol + 0.1 * long
    w = fr.view(-b - 2.0 * vol - 0.03, bottom + 0.03, cap_a + 0.03)
    u, v = w.u, w.v
    cap_sd = _ellipse_sd(u, v, 0.0, -vol, cap_a, b + vol)
    hairline = _col(ident.hairline) * (1.0 - fringe) - 0.42 * fringe + (0.5 - 0.35 * fringe) * (u / a) ** 2
    hair_sd = np.maximum(np.maximum(cap_sd, v - bottom), np.minimum(-w.face_sd, v - hairline))
    alpha = _cover(hair_sd, w.px) * _col(style > 0)
    width = w.img.shape[2]
    streaks = 1.0 + 0.08 * np.sin(np.arange(width, dtype=np.float32) * (2.0 * np.pi / 3.1))[None, None, :, None]
    _paint(w.img, alpha, ident.hair_color[:, None, None, :] * streaks)


def render_faces(
    num: int,
    *,
    identities: np.ndarray | int,
    expressions: np.ndarray | int,
    config: SyntheticFaceConfig,
    rng: np.random.Generator,
    table: FaceIdentities | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num`` faces: uint8 RGB images ``[N, H, W, 3]`` and float32 relative xyxy face boxes ``[N, 4]``.

    Args:
        identities: per image, a row of ``table`` (an int broadcasts to every image).
        expressions: per image, a class index in canonical FER-7 order (``FER7_CLASSES``).
        config: how faces look (size, intensity, jitter, lighting, background, noise).
        rng: draws everything that varies per image (expression noise, pose, lighting, background).
        table: the identity table; default ``make_identities(max(identities) + 1, default_rng(config.seed))``,
            the table :func:`write_synthetic_dataset` uses.
    """
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 0:
        raise ValueError(f"render_faces: num must be a non-negative int, got {num!r}")
    if not isinstance(config, SyntheticFaceConfig):
        raise TypeError(f"render_faces: config must be a SyntheticFaceConfig, got {type(config).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"render_faces: rng must be a numpy Generator, got {type(rng).__name__}")
    num = int(num)
    ids = _check_index_array("identities", identities, num, None if table is None else len(table))
    expr = _check_index_array("expressions", expressions, num, len(FER7_CLASSES))
    if table is None:
        table = make_identities(int(ids.max()) + 1 if num else 0, np.random.default_rng(config.seed))
    size = config.size
    if num == 0:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 4), np.float32)

    f32 = np.float32
    idt = table.take(ids)
    p = expression_parameters(expr, idt.resting, config, rng)

    # pose: face centre, scale (image units per canonical unit), roll and yaw; gaze; lighting
    j = config.align_jitter
    cx = (0.5 + rng.uniform(-j, j, num)).astype(f32)
    cy = (0.52 + rng.uniform(-j, j, num)).astype(f32)
    scale = (0.43 * rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter, num)).astype(f32)
    roll = np.deg2rad(rng.uniform(-config.max_rotation, config.max_rotation, num)).astype(f32)
    yaw = np.deg2rad(rng.uniform(-config.max_yaw, config.max_yaw, num)).astype(f32)
    gaze = rng.uniform(-0.3, 0.3, (2, num)).astype(f32)
    light_az = rng.uniform(0, 2 * np.pi, num).astype(f32)
    light_el = rng.uniform(0.15, 0.6, num).astype(f32)
    lk = f32(config.lighting)
    brightness = lk * rng.uniform(-0.08, 0.08, num).astype(f32)
    contrast = 1.0 + lk * rng.uniform(-0.15, 0.1, num).astype(f32)
    cast = 1.0 + lk * rng.uniform(-0.04, 0.04, (num, 3)).astype(f32)
    boxes = _face_boxes(idt, cx, cy, scale, roll)
    img = _background(num, size, config, rng)

    # the pixel grid in the canonical face frame
    grid = (np.arange(size, dtype=f32) + 0.5) / size
    dx = grid[None, None, :] - _col(cx)
    dy = grid[None, :, None] - _col(cy)
    cos, sin, sc = _col(np.cos(roll)), _col(np.sin(roll)), _col(scale)
    u = (cos * dx + sin * dy) / sc
    v = (-sin * dx + cos * dy) / sc
    del dx, dy
    px = _col(1.0 / (size * scale))
    a, b, jaw = _col(idt.face_width), _col(idt.face_height), _col(idt.jaw)
    # face outline: an ellipse whose lower half narrows towards the chin (the curve _face_boxes samples)
    face_sd = _ellipse_sd(u, v, 0.0, 0.0, a * (1.0 - jaw * np.clip(v / b, 0.0, 1.0) ** 2), b)
    face = _cover(face_sd, px)
    # head surface normal (an ellipsoid); yaw slides the features sideways where the surface faces the camera
    nz = np.sqrt(np.clip(1.0 - (u / a) ** 2 - (v / b) ** 2, 0.0, 1.0))
    yaw_shift = np.sin(yaw) * idt.face_width
    uf = u - _col(yaw_shift) * nz
    to_image = (cx, cy, scale, np.cos(roll), np.sin(roll), size, np.abs(yaw_shift))
    frame = _Frame(img, u, v, uf, face_sd, face, px, to_image)
    _paint(img, face, idt.skin)

    # feature geometry: identity features moved by the expression parameters, all [N, 1, 1]
    g = {name: _col(p[:, i]) for i, name in enumerate(EXPRESSION_PARAMS)}
    g["curve"], g["lip_raise"], g["cheek"] = g["mouth_curve"], g["upper_lip_raise"], g["cheek_raise"]
    g["ey"] = -0.10 + _col(idt.eye_height)
    g["ex"], g["ew"] = _col(idt.eye_spacing), _col(idt.eye_size)
    g["ny"] = g["ey"] + _col(idt.nose_length) - 0.03 * _relu(g["nose_wrinkle"])
    g["nw"] = _col(idt.nose_width) * (1.0 + 0.25 * _relu(g["nose_wrinkle"]))
    g["my"] = g["ny"] + _col(idt.philtrum) - 0.02 * _relu(g["lip_raise"])
    g["mw"] = _col(idt.mouth_width) * (1.0 + 0.2 * g["mouth_width"] + 0.06 * _relu(g["curve"]))
    g["corner"] = 0.095 * g["curve"]  # how far the mouth corners rise
    g["brow_v"] = g["ey"] - 0.45 * g["ew"] - _col(idt.brow_gap) - 0.085 * g["brow_raise"]
    g["inner_v"] = g["brow_v"] - 0.08 * g["brow_inner"]
    g["gaze_u"], g["gaze_v"] = _col(gaze[0]), _col(gaze[1])

    _draw_skin_marks(frame, g, idt.skin)
    _draw_nose(frame, g, idt.skin)
    _draw_eyes(frame, g, idt.iris_color, idt.skin)
    _draw_brows(frame, g, idt)
    _draw_mouth(frame, g, idt)

    # directional shading of the face (Lambertian on the head ellipsoid)
    lx = np.cos(light_el) * np.cos(light_az)
    ly = np.cos(light_el) * np.sin(light_az)
    lz = np.sin(light_el) + 0.6
    norm = np.sqrt(lx**2 + ly**2 + lz**2)
    lambert = np.clip(u / a * _col(lx / norm) + v / b * _col(ly / norm) + nz * _col(lz / norm), 0.0, 1.0)
    img *= (1.0 + face * (lk * 0.45) * (lambert - 0.85))[..., None]
    del lambert, nz

    _draw_hair(frame, g, idt)

    # global brightness/contrast, colour cast, sensor noise
    gain = _col(contrast)[..., None] * cast[:, None, None, :]
    offset = (0.5 - 0.5 * _col(contrast) + _col(brightness))[..., None] * cast[:, None, None, :]
    img *= gain * 255.0
    img += offset * 255.0 + 0.5
    if config.noise > 0:  # luminance noise (one draw per pixel, shared by the channels)
        img += (rng.standard_normal(img.shape[:3], dtype=f32) * f32(255.0 * config.noise))[..., None]
    images = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return images, boxes
