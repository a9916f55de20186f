"""MaskedAutoencoderViT on ferfast's ops against a literal transcription of MAE's models_mae.py forward."""

import pytest
import torch
import torch.nn.functional as F

import ferfast
from ferfast.models import MaskedAutoencoderViT, create_model, get_2d_sincos_pos_embed, mae_vit_demo

BACKENDS = ["reference", *(b for b in ferfast.available_backends(torch.device("cpu")) if b != "reference")]


def tiny_mae(**kwargs):
    cfg = {
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 4,
        "decoder_embed_dim": 24,
        "decoder_depth": 2,
        "decoder_num_heads": 2,
    }
    return MaskedAutoencoderViT(**{**cfg, **kwargs})


def ref_block(blk, x):
    """timm Block (pre-norm, explicit softmax attention)."""
    b, n, c = x.shape
    heads = blk.attn.num_heads
    h = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias, 1e-6)
    qkv = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(b, n, c)
    x = x + F.linear(h, blk.attn.proj.weight, blk.attn.proj.bias)
    h = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    h = F.linear(F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    return x + h


def mae_reference_forward(m, imgs, mask_ratio, noise, norm_pix_loss):
    """facebookresearch/mae models_mae.py forward, transcribed with m's parameters."""
    p = m.patch_embed.patch_size
    # forward_encoder
    x = F.conv2d(imgs, m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=p).flatten(2).transpose(1, 2)
    x = x + m.pos_embed[:, 1:, :]
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    cls_token = m.cls_token + m.pos_embed[:, :1, :]
    x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    for blk in m.blocks:
        x = ref_block(blk, x)
    x = F.layer_norm(x, (d,), m.norm.weight, m.norm.bias, 1e-6)
    # forward_decoder
    x = F.linear(x, m.decoder_embed.weight, m.decoder_embed.bias)
    mask_tokens = m.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + m.decoder_pos_embed
    for blk in m.decoder_blocks:
        x = ref_block(blk, x)
    x = F.layer_norm(x, (x.shape[-1],), m.decoder_norm.weight, m.decoder_norm.bias, 1e-6)
    pred = F.linear(x, m.decoder_pred.weight, m.decoder_pred.bias)[:, 1:, :]
    # forward_loss (patchify: nchpwq -> nhwpqc)
    c, h = imgs.shape[1], imgs.shape[2] // p
    target = imgs.reshape(n, c, h, p, h, p)
    target = torch.einsum("nchpwq->nhwpqc", target).reshape(n, h * h, p * p * c)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    loss = (loss * mask).sum() / mask.sum()
    return loss, pred, mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("fused_head", [False, True])
def test_loss_and_gradients_equal_mae_reference(backend, norm_pix_loss, fused_head):
    model = tiny_mae(norm_pix_loss=norm_pix_loss, fused_head=fused_head, backend=backend)
    with torch.no_grad():  # non-trivial values everywhere (MAE's init zeroes biases, LayerNorms are identity)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    params = [p for p in model.parameters() if p.requires_grad]

    loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    grads = torch.autograd.grad(loss, params)
    ref_loss, ref_pred, ref_mask = mae_reference_forward(model, imgs, 0.75, noise, norm_pix_loss)
    ref_grads = torch.autograd.grad(ref_loss, params)

    torch.testing.assert_close(mask, ref_mask, rtol=0, atol=0)
    assert mask.sum(1).tolist() == [12.0] * 3
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    if fused_head:
        assert pred is None
    else:
        torch.testing.assert_close(pred, ref_pred, rtol=1e-5, atol=1e-5)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        assert g.abs().sum() > 0, name  # every trainable parameter takes part


def test_fixed_sincos_tables_and_names():
    model = tiny_mae()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    expected = torch.from_numpy(get_2d_sincos_pos_embed(32, 4, cls_token=True)).float().unsqueeze(0)
    torch.testing.assert_close(model.pos_embed.data, expected, rtol=0, atol=0)
    assert model.decoder_pos_embed.shape == (1, 17, 24) and model.decoder_pred.weight.shape == (8 * 8 * 3, 24)
    assert model.mask_token.shape == (1, 1, 24)
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {
        "cls_token",
        "pos_embed",
        "patch_embed",
        "blocks",
        "norm",
        "decoder_embed",
        "mask_token",
        "decoder_pos_embed",
        "decoder_blocks",
        "decoder_norm",
        "decoder_pred",
    }


def test_noise_from_generator_is_reproducible():
    model = mae_vit_demo().eval()
    imgs = torch.randn(2, 3, 64, 64)
    a = model(imgs, generator=torch.Generator().manual_seed(7))
    b = model(imgs, generator=torch.Generator().manual_seed(7))
    c = model(imgs, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
    assert not torch.equal(a[2], c[2])
    # the generator draws exactly MAE's torch.rand(B, L) noise
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(model(imgs, noise=noise)[0], a[0], rtol=0, atol=0)
    assert a[1].shape == (2, 64, 8 * 8 * 3) and a[2].sum(1).tolist() == [48.0, 48.0]


def test_unpatchify_inverts_nhwpqc_patches():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    ids_all = torch.arange(16).expand(2, 16)
    patches = ferfast.patchify_gather(imgs, ids_all, 8)
    torch.testing.assert_close(model.unpatchify(patches), imgs, rtol=0, atol=0)


def test_mask_ratio_changes_visible_count():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    for ratio, kept in [(0.0, 16), (0.5, 8), (0.75, 4), (0.9, 1)]:
        latent, mask, ids_restore = model.forward_encoder(imgs, ratio, torch.rand(2, 16))
        assert latent.shape == (2, 1 + kept, 32)
        assert (mask == 0).sum(1).tolist() == [kept, kept]
        assert ids_restore.shape == (2, 16)


def test_factories():
    with torch.device("meta"):
        base = create_model("mae_vit_base_patch16")
        large = create_model("mae_vit_large_patch16")
        tiny = create_model("mae_vit_tiny_patch16", img_size=112)
    assert base.decoder_embed.weight.shape == (512, 768) and len(base.decoder_blocks) == 8
    assert base.decoder_blocks[0].attn.num_heads == 16 and base.decoder_pred.weight.shape == (768, 512)
    assert large.pos_embed.shape == (1, 197, 1024) and len(large.blocks) == 24
    assert tiny.pos_embed.shape == (1, 50, 192)
    demo = mae_vit_demo()
    assert demo.decoder_embed.weight.shape == (64, 128) and len(demo.decoder_blocks) == 2
    assert demo.patch_size == 8 and demo.num_patches == 64


def test_bad_inputs_name_the_argument():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="noise"):
        model(imgs, noise=torch.rand(2, 15))
    with pytest.raises(ValueError, match="imgs"):
        model(torch.randn(2, 3, 40, 40))
    with pytest.raises(ValueError, match="mask_ratio"):
        model(imgs, mask_ratio=1.0)
