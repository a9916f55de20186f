"""Named model configurations (timm/MAE names) and the ``create_model`` registry.

One naming rule: a name such as ``vit_base_patch16`` names an encoder *family*; the classifier of that
family (fine-tuning) is registered under the name itself and its MAE (pretraining) under ``mae_`` + the
name. Wherever a user gives a model name (``--model.name``), either form is accepted and means the same
architecture: :func:`resolve_model_names` maps ``vit_demo`` and ``mae_vit_demo`` alike to
``("mae_vit_demo", "vit_demo")``. ``python -m ferfast.train list-models`` prints the table
(:func:`model_table`).

ViT sizes are timm's: tiny 192/12/3, small 384/12/6, base 768/12/12, large 1024/24/16 (dim/depth/heads).
MAE decoders: 512/8/16 for base and large (MAE's), 256/4/8 for tiny and small (ferfast's choice, MAE
released none). The demo configs fit the demo's CPU budget (docs/design.md): 64x64 images, patch 8.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ferfast.models.mae import MaskedAutoencoderViT
from ferfast.models.vit import VisionTransformer

__all__ = [
    "ModelInfo",
    "create_model",
    "list_models",
    "mae_vit_base_patch8",
    "mae_vit_base_patch16",
    "mae_vit_demo",
    "mae_vit_demo_wide",
    "mae_vit_large_patch8",
    "mae_vit_large_patch16",
    "mae_vit_small_patch8",
    "mae_vit_small_patch16",
    "mae_vit_tiny_patch8",
    "mae_vit_tiny_patch16",
    "model_families",
    "model_table",
    "register_model",
    "resolve_model_names",
    "unknown_model_message",
    "vit_base_patch8",
    "vit_base_patch16",
    "vit_demo",
    "vit_demo_wide",
    "vit_large_patch8",
    "vit_large_patch16",
    "vit_small_patch8",
    "vit_small_patch16",
    "vit_tiny_patch8",
    "vit_tiny_patch16",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

#: encoder (embed_dim, depth, num_heads) per size
ENCODERS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
#: decoder (decoder_embed_dim, decoder_depth, decoder_num_heads) per size
DECODERS = {"tiny": (256, 4, 8), "small": (256, 4, 8), "base": (512, 8, 16), "large": (512, 8, 16)}
#: the demo's small models: dim 128 / depth 4 and dim 192 / depth 6, 4 heads, patch 8, 64x64, decoder 64/2/4
DEMO = {"demo": (128, 4, 4), "demo_wide": (192, 6, 4)}
DEMO_DECODER = (64, 2, 4)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a factory to the registry under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(prefix: str = "") -> list[str]:
    """Sorted names of the registered models that start with ``prefix``."""
    return sorted(name for name in _MODELS if name.startswith(prefix))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` (``num_classes``, ``img_size``, ...) override its config.

    ``name`` is a registered name exactly (``vit_demo`` builds the classifier, ``mae_vit_demo`` the MAE); to
    turn a user's ``model.name`` into the one a stage needs, use :func:`resolve_model_names`.
    """
    if name not in _MODELS:
        raise ValueError(unknown_model_message(name, list_models()))
    return _MODELS[name](**kwargs)


#: The prefix of an MAE's name: ``mae_<family>``.
MAE_PREFIX = "mae_"


def _family(name: str) -> str:
    name = name.strip()
    return name.removeprefix(MAE_PREFIX)


def model_families() -> list[str]:
    """Sorted family names: every registered name without its ``mae_`` prefix (``vit_demo``, ``vit_base_patch16``)."""
    return sorted({_family(name) for name in _MODELS})


def unknown_model_message(name: str, valid: list[str] | None = None) -> str:
    """``unknown model name 'x'; did you mean 'y'? valid names: ...``, with the ``list-models`` hint.

    ``valid`` defaults to the families (:func:`model_families`), each also valid with ``mae_`` in front.
    """
    families = valid is None
    valid = model_families() if valid is None else valid
    close = difflib.get_close_matches(name.strip(), valid, n=3, cutoff=0.6)
    if not close and families and name.strip().startswith(MAE_PREFIX):  # "mae_vit_dmeo": the closest family
        close = difflib.get_close_matches(_family(name), valid, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    also = " (each also with the prefix 'mae_': the same architecture)" if families else ""
    return (
        f"unknown model name {name!r}; {hint}valid names: {', '.join(valid)}{also}; "
        "`python -m ferfast.train list-models` describes them"
    )


def resolve_model_names(name: str) -> tuple[str, str]:
    """``(mae_name, classifier_name)`` of the family ``name`` names, given in either form.

    ``resolve_model_names("vit_demo") == resolve_model_names("mae_vit_demo") == ("mae_vit_demo", "vit_demo")``:
    pretraining builds the first, fine-tuning the second. Raises :class:`ValueError` naming the valid names
    (and the closest ones) when neither form is registered, or when the family lacks the MAE or the
    classifier (a model registered with :func:`register_model` under one form only).
    """
    family = _family(name)
    if family not in model_families():
        raise ValueError(unknown_model_message(name))
    mae_name, vit_name = MAE_PREFIX + family, family
    for missing, kind in ((mae_name, "an MAE (for pretraining)"), (vit_name, "a classifier (for fine-tuning)")):
        if missing not in _MODELS:
            raise ValueError(f"model {name!r} has no {kind}: {missing!r} is not registered")
    return mae_name, vit_name


@dataclass(frozen=True)
class ModelInfo:
    """One row of :func:`model_table`: a family's architecture, sizes and origin."""

    name: str
    mae_name: str
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder: tuple[int, int, int]
    params_m: float
    mae_params_m: float
    source: str


#: timm's ViT size letters, for :func:`_source`
_LETTERS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L"}


def _source(family: str) -> str:
    """Where the family's configuration comes from (a registered name outside ferfast's: its docstring)."""
    if family in DEMO or family.removeprefix("vit_") in DEMO:
        return "ferfast's demo model (docs/design.md); decoder ferfast's"
    parts = family.split("_")
    if len(parts) == 3 and parts[1] in _LETTERS and parts[2].startswith("patch"):
        size, patch = parts[1], parts[2].removeprefix("patch")
        origin = "timm/MAE's" if (size, patch) in (("base", "16"), ("large", "16")) else "timm's"
        ssfer = " (SSFER's)" if (size, patch) == ("base", "16") else ""
        decoder = "MAE's" if size in ("base", "large") else "ferfast's"
        return f"{origin} ViT-{_LETTERS[size]}/{patch}{ssfer}; decoder {decoder}"
    doc = (_MODELS[family].__doc__ or "").strip().splitlines()
    return doc[0] if doc else "registered with register_model"


def model_table(num_classes: int = 7) -> list[ModelInfo]:
    """A :class:`ModelInfo` per family with both forms registered, parameter counts for ``num_classes`` classes.

    The models are built on the meta device (no memory, no initialisation), so this takes about a second.
    """
    rows = []
    for family in model_families():
        if family not in _MODELS or MAE_PREFIX + family not in _MODELS:
            continue
        with torch.device("meta"):
            vit = _MODELS[family](num_classes=num_classes)
            mae = _MODELS[MAE_PREFIX + family]()
        blk = vit.blocks[0].attn
        rows.append(
            ModelInfo(
                name=family,
                mae_name=MAE_PREFIX + family,
                img_size=vit.patch_embed.img_size[0],
                patch_size=vit.patch_embed.patch_size,
                embed_dim=vit.embed_dim,
                depth=len(vit.blocks),
                num_heads=blk.num_heads,
                decoder=(mae.decoder_embed.out_features, len(mae.decoder_blocks), mae.decoder_blocks[0].attn.num_heads),
                params_m=sum(p.numel() for p in vit.parameters()) / 1e6,
                mae_params_m=sum(p.numel() for p in mae.parameters()) / 1e6,
                source=_source(family),
            )
        )
    return sorted(rows, key=lambda r: (r.params_m, -r.patch_size))


def _vit(size: str, patch_size: int, **kwargs: Any) -> VisionTransformer:
    dim, depth, heads = ENCODERS[size]
    cfg: dict[str, Any] = {"patch_size": patch_size, "embed_dim": dim, "depth": depth, "num_heads": heads}
    return VisionTransformer(**{**cfg, **kwargs})


def _mae(size: str, patch_size: int, **kwargs: Any) -> MaskedAutoencoderViT:
    dim, depth, heads = ENCODERS[size]
    ddim, ddepth, dheads = DECODERS[size]
    cfg: dict[str, Any] = {
        "patch_size": patch_size,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "decoder_embed_dim": ddim,
        "decoder_depth": ddepth,
        "decoder_num_heads": dheads,
    }
    return MaskedAutoencoderViT(**{**cfg, **kwargs})


def _demo_cfg(name: str) -> dict[str, Any]:
    dim, depth, heads = DEMO[name]
    return {"img_size": 64, "patch_size": 8, "embed_dim": dim, "depth": depth, "num_heads": heads}


@register_model
def vit_tiny_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 (192/12/3)."""
    return _vit("tiny", 16, **kwargs)


@register_model
def vit_small_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-S/16 (384/12/6)."""
    return _vit("small", 16, **kwargs)


@register_model
def vit_base_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (768/12/12), MAE's and SSFER's fine-tuning model."""
    return _vit("base", 16, **kwargs)


@register_model
def vit_large_patch16(**kwargs: Any) -> VisionTransformer:
    """ViT-L/16 (1024/24/16)."""
    return _vit("large", 16, **kwargs)


@register_model
def vit_tiny_patch8(**kwargs: Any) -> VisionTransformer:
    """ViT-Ti/8 (192/12/3)."""
    return _vit("tiny", 8, **kwargs)


@register_model
def vit_small_patch8(**kwargs: Any) -> VisionTransformer:
    """ViT-S/8 (384/12/6)."""
    return _vit("small", 8, **kwargs)


@register_model
def vit_base_patch8(**kwargs: Any) -> VisionTransformer:
    """ViT-B/8 (768/12/12)."""
    return _vit("base", 8, **kwargs)


@register_model
def vit_large_patch8(**kwargs: Any) -> VisionTransformer:
    """ViT-L/8 (1024/24/16)."""
    return _vit("large", 8, **kwargs)


@register_model
def vit_demo(**kwargs: Any) -> VisionTransformer:
    """The demo's ViT: dim 128, depth 4, 4 heads, patch 8, 64x64 images (docs/design.md)."""
    return VisionTransformer(**{**_demo_cfg("demo"), **kwargs})


@register_model
def vit_demo_wide(**kwargs: Any) -> VisionTransformer:
    """The demo's larger ViT: dim 192, depth 6, 4 heads, patch 8, 64x64 images."""
    return VisionTransformer(**{**_demo_cfg("demo_wide"), **kwargs})


@register_model
def mae_vit_tiny_patch16(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE with a ViT-Ti/16 encoder and a 256/4/8 decoder."""
    return _mae("tiny", 16, **kwargs)


@register_model
def mae_vit_small_patch16(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE with a ViT-S/16 encoder and a 256/4/8 decoder."""
    return _mae("small", 16, **kwargs)


@register_model
def mae_vit_base_patch16(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE ViT-B/16 with MAE's 512/8/16 decoder (``mae_pretrain_vit_base.pth``, SSFER's pretraining)."""
    return _mae("base", 16, **kwargs)


@register_model
def mae_vit_large_patch16(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE ViT-L/16 with MAE's 512/8/16 decoder."""
    return _mae("large", 16, **kwargs)


@register_model
def mae_vit_tiny_patch8(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE with a ViT-Ti/8 encoder and a 256/4/8 decoder."""
    return _mae("tiny", 8, **kwargs)


@register_model
def mae_vit_small_patch8(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE with a ViT-S/8 encoder and a 256/4/8 decoder."""
    return _mae("small", 8, **kwargs)


@register_model
def mae_vit_base_patch8(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE with a ViT-B/8 encoder and MAE's 512/8/16 decoder."""
    return _mae("base", 8, **kwargs)


@register_model
def mae_vit_large_patch8(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE with a ViT-L/8 encoder and MAE's 512/8/16 decoder."""
    return _mae("large", 8, **kwargs)


@register_model
def mae_vit_demo(**kwargs: Any) -> MaskedAutoencoderViT:
    """The demo's MAE: :func:`vit_demo`'s encoder, decoder dim 64, depth 2, 4 heads."""
    ddim, ddepth, dheads = DEMO_DECODER
    cfg = {**_demo_cfg("demo"), "decoder_embed_dim": ddim, "decoder_depth": ddepth, "decoder_num_heads": dheads}
    return MaskedAutoencoderViT(**{**cfg, **kwargs})


@register_model
def mae_vit_demo_wide(**kwargs: Any) -> MaskedAutoencoderViT:
    """MAE with :func:`vit_demo_wide`'s encoder and the demo decoder (64/2/4)."""
    ddim, ddepth, dheads = DEMO_DECODER
    cfg = {**_demo_cfg("demo_wide"), "decoder_embed_dim": ddim, "decoder_depth": ddepth, "decoder_num_heads": dheads}
    return MaskedAutoencoderViT(**{**cfg, **kwargs})
