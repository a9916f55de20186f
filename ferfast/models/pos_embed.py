"""Position embeddings: MAE's fixed 2-D sin-cos table and the bicubic resize used to fine-tune at another size.

Transcribed from facebookresearch/mae ``util/pos_embed.py`` (``get_2d_sincos_pos_embed``,
``interpolate_pos_embed``), generalised to non-square grids.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["get_1d_sincos_pos_embed_from_grid", "get_2d_sincos_pos_embed", "interpolate_pos_embed", "to_grid"]


def to_grid(size: int | tuple[int, int] | list[int], name: str = "grid_size") -> tuple[int, int]:
    """``(rows, cols)`` from an int (square) or a pair of positive ints; ``name`` goes into the error."""
    if isinstance(size, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(isinstance(s, int) for s in size):
        raise TypeError(f"{name} must be an int or a pair of ints, got {size!r}")
    if min(size) <= 0:
        raise ValueError(f"{name} must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE's 1-D table ``[M, embed_dim]``: sin of ``pos * omega`` then cos, ``omega = 1 / 10000^(2i/embed_dim)``."""
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even for a sin-cos embedding, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    pos = pos.reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table ``[(1 if cls_token) + rows*cols, embed_dim]`` (float64; cls row = 0).

    The first half of the channels encodes the column (MAE's ``emb_h`` is fed ``grid[0]``, the
    w coordinate, by ``np.meshgrid``'s xy order), the second half the row, exactly as MAE.
    """
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim <= 0 or embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be a positive multiple of 4 for a 2-D sin-cos embedding, got {embed_dim!r}")
    rows, cols = to_grid(grid_size)
    grid_h = np.arange(rows, dtype=np.float32)
    grid_w = np.arange(cols, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # w goes first, as in MAE
    grid = np.stack(grid, axis=0).reshape(2, 1, rows, cols)
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    pos_embed = np.concatenate([emb_h, emb_w], axis=1)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def interpolate_pos_embed(
    pos_embed: Tensor,
    new_grid: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: int | tuple[int, int] | None = None,
) -> Tensor:
    """Resize a ``[1, prefix + rows*cols, D]`` position embedding to ``new_grid`` (bicubic, MAE's rule).

    The prefix (cls) tokens are kept; the patch tokens are resized as an image with
    ``align_corners=False``. ``old_grid`` defaults to the square root of the patch-token count.
    Returns the input itself when the grid does not change.
    """
    if not isinstance(pos_embed, Tensor):
        raise TypeError(f"pos_embed must be a torch.Tensor, got {type(pos_embed).__name__}")
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape [1, num_prefix_tokens + L, D], got {tuple(pos_embed.shape)}")
    if not isinstance(num_prefix_tokens, int) or not 0 <= num_prefix_tokens <= pos_embed.shape[1]:
        raise ValueError(f"num_prefix_tokens must be an int in [0, {pos_embed.shape[1]}], got {num_prefix_tokens!r}")
    new_rows, new_cols = to_grid(new_grid, "new_grid")
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"pos_embed has {num_patches} patch tokens, not a square grid; pass old_grid=(rows, cols)")
        old_rows, old_cols = side, side
    else:
        old_rows, old_cols = to_grid(old_grid, "old_grid")
        if old_rows * old_cols != num_patches:
            raise ValueError(f"old_grid {(old_rows, old_cols)} does not match pos_embed's {num_patches} patch tokens")
    if (old_rows, old_cols) == (new_rows, new_cols):
        return pos_embed
    dim = pos_embed.shape[2]
    prefix, tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    tokens = tokens.reshape(1, old_rows, old_cols, dim).permute(0, 3, 1, 2).float()
    tokens = F.interpolate(tokens, size=(new_rows, new_cols), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)
    return torch.cat([prefix, tokens], dim=1)
