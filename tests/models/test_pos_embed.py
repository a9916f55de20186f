"""Position embeddings: MAE's sin-cos table and bicubic interpolation, against literal transcriptions of MAE."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferfast.models import get_2d_sincos_pos_embed, interpolate_pos_embed


def mae_2d_sincos(embed_dim, grid_size, cls_token=False):
    """facebookresearch/mae util/pos_embed.py, copied (np.float -> np.float64)."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        pos = pos.reshape(-1)
        out = np.einsum("m,d->md", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def mae_interpolate(pos_embed_checkpoint, num_patches, num_extra_tokens=1):
    """MAE's interpolate_pos_embed, on a tensor instead of a checkpoint dict."""
    embedding_size = pos_embed_checkpoint.shape[-1]
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches**0.5)
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


@pytest.mark.parametrize(("dim", "grid", "cls"), [(768, 14, True), (512, 14, True), (64, 8, False), (16, 3, True)])
def test_sincos_equals_mae(dim, grid, cls):
    ours = get_2d_sincos_pos_embed(dim, grid, cls_token=cls)
    ref = mae_2d_sincos(dim, grid, cls_token=cls)
    assert ours.shape == ((1 if cls else 0) + grid * grid, dim)
    np.testing.assert_array_equal(ours, ref)
    if cls:
        assert not ours[0].any()


def test_sincos_non_square_grid_matches_square_rows():
    """A (rows, cols) grid: row r, col c gets the same vector as in a square grid that contains it."""
    rect = get_2d_sincos_pos_embed(32, (3, 5))
    square = get_2d_sincos_pos_embed(32, 5).reshape(5, 5, 32)
    assert rect.shape == (15, 32)
    np.testing.assert_array_equal(rect.reshape(3, 5, 32), square[:3])
    # first half of the channels follows the column, second half the row (MAE's meshgrid order)
    np.testing.assert_array_equal(rect.reshape(3, 5, 32)[0, :, :16], rect.reshape(3, 5, 32)[2, :, :16])
    assert not np.array_equal(rect.reshape(3, 5, 32)[0, :, 16:], rect.reshape(3, 5, 32)[2, :, 16:])


@pytest.mark.parametrize("new", [7, 8, 16, 20])
def test_interpolate_equals_mae(new):
    pe = torch.randn(1, 1 + 14 * 14, 24)
    ours = interpolate_pos_embed(pe, new)
    assert ours.shape == (1, 1 + new * new, 24)
    torch.testing.assert_close(ours, mae_interpolate(pe, new * new), rtol=0, atol=0)
    torch.testing.assert_close(ours[:, :1], pe[:, :1], rtol=0, atol=0)  # cls token untouched


def test_interpolate_same_grid_identity_and_non_square():
    pe = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pe, 4) is pe
    rect = interpolate_pos_embed(pe, (2, 6))
    assert rect.shape == (1, 13, 8)
    back = interpolate_pos_embed(rect, (4, 4), old_grid=(2, 6))
    assert back.shape == pe.shape
    no_prefix = interpolate_pos_embed(pe[:, 1:], 2, num_prefix_tokens=0)
    assert no_prefix.shape == (1, 4, 8)
    half = interpolate_pos_embed(pe.double(), 2)
    assert half.dtype == torch.float64


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: interpolate_pos_embed(torch.zeros(1, 1 + 15, 8), 4), ValueError, "old_grid"),
        (lambda: interpolate_pos_embed(torch.zeros(1, 1 + 16, 8), 4, old_grid=(3, 4)), ValueError, "old_grid"),
        (lambda: interpolate_pos_embed(torch.zeros(17, 8), 4), ValueError, "pos_embed"),
        (lambda: interpolate_pos_embed([[0.0]], 4), TypeError, "pos_embed"),
        (lambda: interpolate_pos_embed(torch.zeros(1, 17, 8), 0), ValueError, "new_grid"),
        (lambda: interpolate_pos_embed(torch.zeros(1, 17, 8), 4, num_prefix_tokens=18), ValueError, "num_prefix"),
        (lambda: get_2d_sincos_pos_embed(30, 4), ValueError, "embed_dim"),
        (lambda: get_2d_sincos_pos_embed(32, 2.5), TypeError, "grid_size"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
