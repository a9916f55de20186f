"""Named model configurations (timm/MAE names) and the ``create_model`` registry.

ViT sizes are timm's: tiny 192/12/3, small 384/12/6, base 768/12/12, large 1024/24/16 (dim/depth/heads).
MAE decoders: 512/8/16 for base and large (MAE's), 256/4/8 for tiny and small (ferfast's choice, MAE
released none). The demo configs fit DESIGN.md §6's CPU budget: 64x64 images, patch 8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ferfast.models.mae import MaskedAutoencoderViT
from ferfast.models.vit import VisionTransformer

__all__ = [
    "create_model",
    "list_models",
    "mae_vit_base_patch8",
    "mae_vit_base_patch16",
    "mae_vit_demo",
    "mae_vit_demo_wide",
    "mae_vit_large_patch16",
    "mae_vit_small_patch8",
    "mae_vit_small_patch16",
    "mae_vit_tiny_patch8",
    "mae_vit_tiny_patch16",
    "register_model",
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
    """Build the registered model ``name``; ``kwargs`` (``num_classes``, ``img_size``, ...) override its config."""
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


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
    """The demo's ViT: dim 128, depth 4, 4 heads, patch 8, 64x64 images (DESIGN.md §6)."""
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
