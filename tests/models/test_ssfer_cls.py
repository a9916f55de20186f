"""SSFER fine-tunes on the [CLS] token after the pretrained ``norm``: ferfast's ViT loaded by ``load_pretrained``
gives the features and logits of SSFER's VisionTransformer (MAE's ``models_vit.py``, transcribed below on timm)
loaded from the same SSFER-format checkpoint as SSFER's ``fine-tune.py`` / MAE's ``main_finetune.py`` load it.
MAE's global pooling (mean of the patch tokens + a fresh ``fc_norm``) stays an option and matches MAE's too."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferfast.config import ModelConfig, TrainConfig, build_config
from ferfast.engine.stages import build_classifier
from ferfast.models import MaskedAutoencoderViT, VisionTransformer, load_pretrained

timm_vit = pytest.importorskip("timm.models.vision_transformer")

#: a small ViT: 32x32 images, patch 8 (a 4x4 grid), dim 48, depth 2, 3 heads; MAE decoder 32/1/4
ENCODER = {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}
DECODER = {"decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 4}
NUM_CLASSES = 7


# ---- the transcription: SSFER's MyVisionTransformer.py (= MAE's models_vit.py) and its loading ----------------


class SSFERVisionTransformer(timm_vit.VisionTransformer):
    """SSFER's ``VisionTransformer`` (MAE's ``models_vit.VisionTransformer``): timm's ViT with ``global_pool``
    (default False: [CLS] after ``norm``; True: ``norm`` deleted, mean of the patch tokens + ``fc_norm``).
    Its weight init is left out: every weight compared here is loaded or copied."""

    def __init__(self, global_pool=False, **kwargs):
        super().__init__(**kwargs)
        self.global_pool = global_pool
        if self.global_pool:
            norm_layer = kwargs["norm_layer"]
            embed_dim = kwargs["embed_dim"]
            self.fc_norm = norm_layer(embed_dim)
            del self.norm  # remove the original norm

    def forward_features(self, x):
        B = x.shape[0]
        x = self.patch_embed(x)
        cls_tokens = self.cls_token.expand(B, -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        x = x + self.pos_embed
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            x = x[:, 1:, :].mean(dim=1)  # global pool without cls token
            outcome = self.fc_norm(x)
        else:
            x = self.norm(x)
            outcome = x[:, 0]
        return outcome

    def forward(self, x):
        # timm 0.3.2's VisionTransformer.forward, which MAE and SSFER ran on (timm 1.x's forward_head would pool again)
        return self.head(self.forward_features(x))


def ssfer_vit(img_size, global_pool=False):
    """SSFER's ``vit_base_patch16`` factory with the small encoder."""
    return SSFERVisionTransformer(
        global_pool=global_pool,
        img_size=img_size,
        num_classes=NUM_CLASSES,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **ENCODER,
    )


def mae_interpolate_pos_embed(model, checkpoint_model):
    """MAE's (and SSFER's) ``util/pos_embed.py`` ``interpolate_pos_embed``: bicubic resize of the patch positions."""
    if "pos_embed" in checkpoint_model:
        pos_embed_checkpoint = checkpoint_model["pos_embed"]
        embedding_size = pos_embed_checkpoint.shape[-1]
        num_patches = model.patch_embed.num_patches
        num_extra_tokens = model.pos_embed.shape[-2] - num_patches
        orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
        new_size = int(num_patches**0.5)
        if orig_size != new_size:
            extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
            pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
            pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
            pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
            pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
            checkpoint_model["pos_embed"] = torch.cat((extra_tokens, pos_tokens), dim=1)


def ssfer_load(model, checkpoint):
    """SSFER's ``fine-tune.py`` (MAE's ``main_finetune.py``): drop a mismatched head, interpolate the position
    embedding, ``load_state_dict(strict=False)``, check the missing keys as MAE does."""
    checkpoint_model = dict(checkpoint["model"])
    state_dict = model.state_dict()
    for k in ["head.weight", "head.bias"]:
        if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
            del checkpoint_model[k]
    mae_interpolate_pos_embed(model, checkpoint_model)
    msg = model.load_state_dict(checkpoint_model, strict=False)
    if model.global_pool:
        assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    else:
        assert set(msg.missing_keys) == {"head.weight", "head.bias"}  # SSFER's assert: norm is loaded
    return msg


# ---- the checkpoint and the comparison --------------------------------------------------------------------------


def ssfer_checkpoint(dtype):
    """An SSFER-format pretraining checkpoint: ``{'model': MAE's whole state dict (encoder, norm, decoder)}``, every
    tensor random (LayerNorms around 1) so that a norm that is not loaded, or loaded into the wrong place, shows."""
    mae = MaskedAutoencoderViT(img_size=32, **ENCODER, **DECODER)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in mae.state_dict().items():
        noise = torch.randn(value.shape, generator=gen, dtype=torch.float64)
        is_norm_weight = key.endswith("weight") and value.dim() == 1
        state[key] = (1.0 + 0.3 * noise if is_norm_weight else 0.2 * noise).to(dtype)
    assert {"norm.weight", "norm.bias", "mask_token", "decoder_pred.weight"} <= state.keys()
    return {"model": state, "epoch": 599}


def load_both(img_size, global_pool, dtype):
    ckpt = ssfer_checkpoint(dtype)
    ref = ssfer_vit(img_size, global_pool).to(dtype)
    msg = ssfer_load(ref, ckpt)
    ours = VisionTransformer(img_size=img_size, num_classes=NUM_CLASSES, global_pool=global_pool, **ENCODER)
    ours = ours.to(dtype)
    report = load_pretrained(ours, ckpt)
    assert sorted(report.ignored_keys) == sorted(msg.unexpected_keys)  # decoder (+ norm under global pooling)
    # the same head (and, with global pooling, the same fc_norm) in both, as fine-tuning would train them
    gen = torch.Generator().manual_seed(1)
    shared = ["head.weight", "head.bias"] + (["fc_norm.weight", "fc_norm.bias"] if global_pool else [])
    with torch.no_grad():
        for key in shared:
            value = torch.randn(ref.state_dict()[key].shape, generator=gen, dtype=torch.float64).to(dtype)
            ref.get_parameter(key).copy_(value)
            ours.get_parameter(key).copy_(value)
    return ckpt["model"], ref.eval(), ours.eval(), report


def features_and_logits(model, x):
    with torch.no_grad():
        if isinstance(model, SSFERVisionTransformer):
            feats = model.forward_features(x)
        else:
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
        return feats, model(x)


def test_ssfer_cls_features_equal_after_loading_an_ssfer_checkpoint():
    state, ref, ours, report = load_both(32, global_pool=False, dtype=torch.float64)
    assert not hasattr(ours, "fc_norm") and isinstance(ours.norm, nn.LayerNorm)
    # the report: only the head is missing; norm.* is loaded, not ignored; the decoder is ignored
    assert sorted(report.missing_keys) == ["head.bias", "head.weight"]
    assert not any(k.startswith("norm.") for k in report.ignored_keys + report.unexpected_keys)
    assert "mask_token" in report.ignored_keys and report.interpolated == {}
    for key in ("norm.weight", "norm.bias"):
        torch.testing.assert_close(ours.state_dict()[key], state[key], rtol=0, atol=0)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (f_ref, l_ref), (f_ours, l_ours) = features_and_logits(ref, x), features_and_logits(ours, x)
    assert f_ours.shape == (5, 48) and l_ours.shape == (5, NUM_CLASSES)
    torch.testing.assert_close(f_ours, f_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-12, atol=1e-12)
    # it is the pretrained norm that makes them equal: with norm at its init the features differ
    with torch.no_grad():
        ours.norm.reset_parameters()
    assert not torch.allclose(features_and_logits(ours, x)[0], f_ref, atol=1e-3)


def test_ssfer_cls_with_interpolated_pos_embed():
    """Fine-tuning at another size (32 -> 48: a 4x4 grid -> 6x6) interpolates pos_embed as MAE/SSFER do."""
    _, ref, ours, report = load_both(48, global_pool=False, dtype=torch.float32)
    assert report.interpolated == {"pos_embed": ((1, 17, 48), (1, 37, 48))}
    assert sorted(report.missing_keys) == ["head.bias", "head.weight"]
    torch.testing.assert_close(ours.pos_embed, ref.pos_embed, rtol=1e-6, atol=1e-6)
    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    (f_ref, l_ref), (f_ours, l_ours) = features_and_logits(ref, x), features_and_logits(ours, x)
    torch.testing.assert_close(f_ours, f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-5, atol=1e-5)


def test_mae_global_pool_option_equals_maes_fc_norm_path():
    _, ref, ours, report = load_both(32, global_pool=True, dtype=torch.float64)
    assert not hasattr(ours, "norm") and isinstance(ours.fc_norm, nn.LayerNorm)
    assert sorted(report.missing_keys) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"norm.weight", "norm.bias"} <= set(report.ignored_keys)  # MAE's fine-tuning ignores the final norm
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (f_ref, l_ref), (f_ours, l_ours) = features_and_logits(ref, x), features_and_logits(ours, x)
    torch.testing.assert_close(f_ours, f_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-12, atol=1e-12)


def test_defaults_are_ssfers_cls():
    """The recipes (ModelConfig, and the classifier the stages build from it) default to SSFER's [CLS]."""
    assert ModelConfig().global_pool is False
    cfg = build_config(TrainConfig, overrides={"model.name": "vit_demo", "data.image_size": 32})
    model = build_classifier(cfg, NUM_CLASSES)
    names = dict(model.named_parameters())
    assert "norm.weight" in names and "fc_norm.weight" not in names
    cfg = build_config(TrainConfig, overrides={"model.name": "vit_demo", "model.global_pool": True})
    names = dict(build_classifier(cfg, NUM_CLASSES).named_parameters())
    assert "fc_norm.weight" in names and "norm.weight" not in names


def test_global_pool_checkpoint_into_cls_model_names_the_setting():
    """A checkpoint fine-tuned with global pooling (fc_norm, no norm) does not fit a [CLS] model: the error says why."""
    gp = VisionTransformer(img_size=32, num_classes=NUM_CLASSES, global_pool=True, **ENCODER)
    cls = VisionTransformer(img_size=32, num_classes=NUM_CLASSES, global_pool=False, **ENCODER)
    with pytest.raises(ValueError, match=r"global_pool=True"):
        load_pretrained(cls, gp.state_dict())
