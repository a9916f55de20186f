"""VisionTransformer: timm/MAE sizes, the patch embedding as a Linear on nhwpqc patches, attention, pooling."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferfast import patchify_gather
from ferfast.models import (
    PatchEmbed,
    VisionTransformer,
    conv_to_linear_patch_weight,
    create_model,
    linear_to_conv_patch_weight,
    list_models,
    vit_demo,
)
from ferfast.models.vit import Attention, drop_path


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "count"),
    # timm's published parameter counts of vit_{tiny,small,base}_patch16_224 (1000 classes)
    [("vit_tiny_patch16", 5_717_416), ("vit_small_patch16", 22_050_664), ("vit_base_patch16", 86_567_656)],
)
def test_sizes_match_timm(name, count):
    with torch.device("meta"):
        model = create_model(name)
    assert num_params(model) == count


def test_factories_and_registry():
    names = list_models()
    for size in ("tiny", "small", "base", "large"):
        for patch in (8, 16):
            assert f"vit_{size}_patch{patch}" in names
    assert {"vit_demo", "vit_demo_wide", "mae_vit_demo", "mae_vit_base_patch16"} <= set(names)
    with torch.device("meta"):
        large = create_model("vit_large_patch8", img_size=64, num_classes=7)
        wide = create_model("vit_demo_wide")
    assert large.pos_embed.shape == (1, 1 + 8 * 8, 1024) and len(large.blocks) == 24
    assert large.head.weight.shape == (7, 1024)
    assert large.blocks[0].attn.num_heads == 16
    assert wide.embed_dim == 192 and len(wide.blocks) == 6 and wide.img_size == (64, 64)
    demo = vit_demo()
    assert (demo.embed_dim, len(demo.blocks), demo.patch_size, demo.grid_size) == (128, 4, 8, (8, 8))
    with pytest.raises(ValueError, match="unknown model name 'vit_huge'"):
        create_model("vit_huge")


def test_patch_embedding_as_linear_equals_conv2d():
    """conv weight permuted to (D, p, p, C) = the Linear weight for nhwpqc patches."""
    embed = PatchEmbed(img_size=(16, 24), patch_size=8, in_chans=3, embed_dim=10)
    imgs = torch.randn(2, 3, 16, 24)
    conv = nn.Conv2d(3, 10, 8, 8)
    conv.load_state_dict(embed.proj.state_dict())
    all_tokens = conv(imgs).flatten(2).transpose(1, 2)  # [B, L, D]
    ids_keep = torch.tensor([[5, 0, 2], [1, 4, 3]])
    patches = patchify_gather(imgs, ids_keep, 8)
    visible = embed.embed_patches(patches)
    expected = torch.gather(all_tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, 10))
    torch.testing.assert_close(visible, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embed(imgs), all_tokens, rtol=0, atol=0)
    lin = conv_to_linear_patch_weight(conv.weight)
    assert lin.shape == (10, 8 * 8 * 3)
    torch.testing.assert_close(linear_to_conv_patch_weight(lin, 3, 8), conv.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="weight"):
        linear_to_conv_patch_weight(lin, 1, 8)


def test_attention_equals_softmax_attention():
    attn = Attention(16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    qkv = attn.qkv(x).reshape(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = (q @ k.transpose(-2, -1) / math.sqrt(4)).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("global_pool", [True, False])
def test_forward_and_pooling(global_pool):
    model = VisionTransformer(
        img_size=(32, 48), patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=7, global_pool=global_pool
    ).eval()
    names = dict(model.named_parameters())
    assert ("fc_norm.weight" in names) == global_pool and ("norm.weight" in names) != global_pool
    assert model.pos_embed.shape == (1, 1 + 4 * 6, 32) and model.pos_embed.requires_grad
    x = torch.randn(3, 3, 32, 48)
    logits = model(x)
    assert logits.shape == (3, 7)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 25, 32)
    pooled = model.forward_head(tokens, pre_logits=True)
    if global_pool:
        expected = F.layer_norm(tokens[:, 1:].mean(1), (32,), model.fc_norm.weight, model.fc_norm.bias, 1e-6)
    else:
        expected = F.layer_norm(tokens[:, 0], (32,), model.norm.weight, model.norm.bias, 1e-6)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(logits, model.head(expected))
    # every sample is computed on its own
    torch.testing.assert_close(model(x[1:2]), logits[1:2], rtol=1e-5, atol=1e-5)
    model.reset_classifier(0)
    assert model(x).shape == (3, 32)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


def test_drop_path_train_vs_eval():
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=4, num_heads=2, drop_path_rate=0.5)
    rates = [blk.drop_path.drop_prob for blk in model.blocks[1:]]
    assert model.blocks[0].drop_path.__class__ is nn.Identity  # rate 0 for the first block
    assert rates == pytest.approx([0.5 / 3, 1.0 / 3, 0.5])
    x = torch.randn(8, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))
    # drop_path zeroes whole samples and rescales the others
    y = drop_path(torch.ones(1000, 3), 0.25, training=True)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 1 / 0.75) and torch.all(y[~kept] == 0)
    assert 0.65 < kept.float().mean() < 0.85


def test_backward_reaches_every_parameter():
    model = vit_demo(num_classes=7, img_size=32)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"img_size": 60, "patch_size": 8}, "multiple of patch_size"),
        ({"img_size": 0}, "img_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"num_classes": -1}, "num_classes"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"embed_dim": 30, "num_heads": 4}, "num_heads"),
    ],
)
def test_bad_config(kwargs, match):
    cfg = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        VisionTransformer(**cfg)


def test_wrong_image_size_names_imgs():
    model = vit_demo()
    with pytest.raises(ValueError, match=r"imgs must have shape \[B, 3, 64, 64\]"):
        model(torch.randn(1, 3, 32, 32))
