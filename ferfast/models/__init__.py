"""ferfast's models: ViT for fine-tuning, MAE on ferfast's fused ops, and MAE/SSFER-compatible checkpoints.

Parameter names follow MAE's ``models_vit.py`` / ``models_mae.py`` (timm's ViT), so official MAE and
SSFER checkpoints load with :func:`load_pretrained`. This package knows nothing of data or the engine.
"""

from __future__ import annotations

from ferfast.models.checkpoint import (
    LoadReport,
    load_mae_checkpoint,
    load_pretrained,
    mae_state_dict,
    read_state_dict,
    strip_wrapper_prefixes,
    unwrap_model,
)
from ferfast.models.factory import (
    ModelInfo,
    create_model,
    list_models,
    mae_vit_base_patch8,
    mae_vit_base_patch16,
    mae_vit_demo,
    mae_vit_demo_wide,
    mae_vit_large_patch8,
    mae_vit_large_patch16,
    mae_vit_small_patch8,
    mae_vit_small_patch16,
    mae_vit_tiny_patch8,
    mae_vit_tiny_patch16,
    model_families,
    model_table,
    register_model,
    resolve_model_names,
    vit_base_patch8,
    vit_base_patch16,
    vit_demo,
    vit_demo_wide,
    vit_large_patch8,
    vit_large_patch16,
    vit_small_patch8,
    vit_small_patch16,
    vit_tiny_patch8,
    vit_tiny_patch16,
)
from ferfast.models.mae import MaskedAutoencoderViT
from ferfast.models.pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed
from ferfast.models.vit import (
    PatchEmbed,
    VisionTransformer,
    conv_to_linear_patch_weight,
    linear_to_conv_patch_weight,
)

__all__ = [
    "LoadReport",
    "MaskedAutoencoderViT",
    "ModelInfo",
    "PatchEmbed",
    "VisionTransformer",
    "conv_to_linear_patch_weight",
    "create_model",
    "get_2d_sincos_pos_embed",
    "interpolate_pos_embed",
    "linear_to_conv_patch_weight",
    "list_models",
    "load_mae_checkpoint",
    "load_pretrained",
    "mae_state_dict",
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
    "read_state_dict",
    "register_model",
    "resolve_model_names",
    "strip_wrapper_prefixes",
    "unwrap_model",
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
