"""Checkpoints: MAE's mae_pretrain_vit_base.pth and SSFER's pretraining checkpoint (exact key names and shapes,
written out here from MAE's models_mae.py) load into ViT-B for fine-tuning; MAE checkpoints round-trip."""

import argparse

import pytest
import torch

from ferfast.models import (
    create_model,
    interpolate_pos_embed,
    load_mae_checkpoint,
    load_pretrained,
    mae_state_dict,
    mae_vit_demo,
    vit_base_patch16,
    vit_demo,
)


def block_spec(prefix, dim):
    return [
        (f"{prefix}.norm1.weight", [dim]),
        (f"{prefix}.norm1.bias", [dim]),
        (f"{prefix}.attn.qkv.weight", [3 * dim, dim]),
        (f"{prefix}.attn.qkv.bias", [3 * dim]),
        (f"{prefix}.attn.proj.weight", [dim, dim]),
        (f"{prefix}.attn.proj.bias", [dim]),
        (f"{prefix}.norm2.weight", [dim]),
        (f"{prefix}.norm2.bias", [dim]),
        (f"{prefix}.mlp.fc1.weight", [4 * dim, dim]),
        (f"{prefix}.mlp.fc1.bias", [4 * dim]),
        (f"{prefix}.mlp.fc2.weight", [dim, 4 * dim]),
        (f"{prefix}.mlp.fc2.bias", [dim]),
    ]


# mae_pretrain_vit_base.pth: {'model': encoder only, no head}
ENCODER_SPEC = [
    ("cls_token", [1, 1, 768]),
    ("pos_embed", [1, 197, 768]),
    ("patch_embed.proj.weight", [768, 3, 16, 16]),
    ("patch_embed.proj.bias", [768]),
    *[kv for i in range(12) for kv in block_spec(f"blocks.{i}", 768)],
    ("norm.weight", [768]),
    ("norm.bias", [768]),
]
# SSFER's 125w_base_warmup50_batch256_600.pth: the whole mae_vit_base_patch16 (state_dict order of models_mae.py)
DECODER_SPEC = [
    ("mask_token", [1, 1, 512]),
    ("decoder_pos_embed", [1, 197, 512]),
    ("decoder_embed.weight", [512, 768]),
    ("decoder_embed.bias", [512]),
    *[kv for i in range(8) for kv in block_spec(f"decoder_blocks.{i}", 512)],
    ("decoder_norm.weight", [512]),
    ("decoder_norm.bias", [512]),
    ("decoder_pred.weight", [768, 512]),
    ("decoder_pred.bias", [768]),
]


def fill_value(i):
    return float(i + 1) / 1000.0


def make_state(spec):
    """A state dict with the spec's names and shapes; tensor i is filled with fill_value(i), pos_embed is random."""
    state = {k: torch.full(shape, fill_value(i)) for i, (k, shape) in enumerate(spec)}
    state["pos_embed"] = torch.randn(1, 197, 768)
    return state


@pytest.fixture(scope="module")
def mae_pretrain():
    return {"model": make_state(ENCODER_SPEC)}


@pytest.fixture(scope="module")
def ssfer_pretrain():
    state = make_state(ENCODER_SPEC + DECODER_SPEC)
    return {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": [0, 1]}]},
        "epoch": 599,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True),
    }


def assert_encoder_loaded(model, state):
    loaded = model.state_dict()
    for key, _ in ENCODER_SPEC:
        if key.startswith("blocks.") or key.startswith("patch_embed.") or key == "cls_token":
            torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0, msg=key)


def test_models_use_mae_names_and_shapes():
    with torch.device("meta"):
        mae = create_model("mae_vit_base_patch16")
        vit = vit_base_patch16(num_classes=0, global_pool=False)
    got = {k: list(v.shape) for k, v in mae.state_dict().items()}
    assert got == dict(ENCODER_SPEC + DECODER_SPEC)
    assert {k: list(v.shape) for k, v in vit.state_dict().items()} == dict(ENCODER_SPEC)


@pytest.mark.parametrize("img_size", [224, 112])
def test_mae_pretrain_vit_base_loads_for_finetuning(mae_pretrain, img_size):
    model = vit_base_patch16(num_classes=7, img_size=img_size, global_pool=True)  # MAE's fine-tuning default
    report = load_pretrained(model, mae_pretrain)
    assert sorted(report.missing_keys) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report.unexpected_keys == [] and report.dropped_head_keys == []
    assert sorted(report.ignored_keys) == ["norm.bias", "norm.weight"]  # MAE's fine-tuning ignores the final norm
    assert_encoder_loaded(model, mae_pretrain["model"])
    pos = mae_pretrain["model"]["pos_embed"]
    if img_size == 224:
        assert report.interpolated == {}
        torch.testing.assert_close(model.pos_embed.data, pos, rtol=0, atol=0)
    else:
        assert report.interpolated == {"pos_embed": ((1, 197, 768), (1, 50, 768))}
        torch.testing.assert_close(model.pos_embed.data, interpolate_pos_embed(pos, 7), rtol=0, atol=0)
        torch.testing.assert_close(model.pos_embed.data[:, 0], pos[:, 0], rtol=0, atol=0)
    # fc_norm at its init (identity), head re-initialised as MAE's main_finetune (trunc_normal std 2e-5)
    assert torch.equal(model.fc_norm.weight, torch.ones(768)) and torch.equal(model.fc_norm.bias, torch.zeros(768))
    assert 0 < model.head.weight.std() < 1e-4 and torch.equal(model.head.bias, torch.zeros(7))
    assert "missing_keys (4)" in report.summary()


def test_ssfer_checkpoint_loads_decoder_ignored(ssfer_pretrain):
    model = vit_base_patch16(num_classes=7, img_size=112, global_pool=False)
    report = load_pretrained(model, ssfer_pretrain)
    assert sorted(report.ignored_keys) == sorted(k for k, _ in DECODER_SPEC)
    assert sorted(report.missing_keys) == ["head.bias", "head.weight"]  # cls pooling keeps norm
    assert report.unexpected_keys == []
    assert_encoder_loaded(model, ssfer_pretrain["model"])
    torch.testing.assert_close(model.norm.weight.data, ssfer_pretrain["model"]["norm.weight"], rtol=0, atol=0)


def test_copy_norm_to_fc_norm_and_head_of_same_shape_is_kept(mae_pretrain):
    model = vit_base_patch16(num_classes=7, img_size=112, global_pool=True)
    state = dict(mae_pretrain["model"])
    state["head.weight"], state["head.bias"] = torch.full((7, 768), 0.5), torch.full((7,), 0.25)
    report = load_pretrained(model, state, copy_norm_to_fc_norm=True)
    assert report.missing_keys == [] and report.ignored_keys == []
    assert report.renamed == {"norm.weight": "fc_norm.weight", "norm.bias": "fc_norm.bias"}
    torch.testing.assert_close(model.fc_norm.weight.data, state["norm.weight"], rtol=0, atol=0)
    assert torch.all(model.head.weight == 0.5) and torch.all(model.head.bias == 0.25)
    # a 1000-class head (MAE's fine-tuned ImageNet checkpoint) is dropped
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 768), torch.zeros(1000)
    report = load_pretrained(model, state)
    assert report.dropped_head_keys == ["head.weight", "head.bias"]


def test_file_round_trip_with_mae_args_and_prefixes(tmp_path):
    """A file written like MAE's misc.save_model (args as an argparse.Namespace, DDP 'module.' prefixes)."""
    mae = mae_vit_demo()
    path = tmp_path / "checkpoint-7.pth"
    torch.save(
        {
            "model": {"module." + k: v for k, v in mae.state_dict().items()},
            "optimizer": torch.optim.AdamW(mae.parameters()).state_dict(),
            "epoch": 7,
            "scaler": {"scale": 1024.0},
            "args": argparse.Namespace(model="mae_vit_demo", blr=1.5e-4),
        },
        path,
    )
    model = vit_demo(num_classes=7, img_size=32, global_pool=False)  # [CLS] after norm: norm loaded, not ignored
    report = load_pretrained(model, path)
    assert report.interpolated == {"pos_embed": ((1, 65, 128), (1, 17, 128))}
    assert len(report.ignored_keys) == len([k for k in mae.state_dict() if k.startswith("decoder_")]) + 1
    torch.testing.assert_close(model.norm.weight, mae.norm.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.blocks[3].mlp.fc2.weight, mae.blocks[3].mlp.fc2.weight, rtol=0, atol=0)

    resumed = mae_vit_demo()
    assert load_mae_checkpoint(resumed, str(path)).missing_keys == []
    imgs, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 64)
    torch.testing.assert_close(resumed(imgs, noise=noise)[0], mae(imgs, noise=noise)[0], rtol=0, atol=0)
    assert mae_state_dict(torch.nn.parallel.DataParallel(mae)).keys() == mae.state_dict().keys()


def test_mae_checkpoint_other_grid_and_missing_decoder():
    mae = mae_vit_demo()
    small = mae_vit_demo(img_size=32)
    report = load_mae_checkpoint(small, mae_state_dict(mae))
    assert report.kept_model_keys == ["pos_embed", "decoder_pos_embed"]
    assert small.pos_embed.shape == (1, 17, 128)
    torch.testing.assert_close(small.decoder_pred.weight, mae.decoder_pred.weight, rtol=0, atol=0)
    encoder_only = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    with pytest.raises(ValueError, match="missing keys: mask_token, decoder_pos_embed"):
        load_mae_checkpoint(mae_vit_demo(), encoder_only)
    report = load_mae_checkpoint(mae_vit_demo(), encoder_only, strict=False)
    assert "decoder_pred.weight" in report.missing_keys and report.unexpected_keys == []


def test_wrong_architecture_is_a_clear_error():
    source = mae_vit_demo().state_dict()
    del source["blocks.3.attn.qkv.weight"]
    model = vit_demo(num_classes=7)
    before = model.blocks[0].attn.qkv.weight.clone()
    with pytest.raises(ValueError, match=r"missing keys: blocks\.3\.attn\.qkv\.weight"):
        load_pretrained(model, source)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, before, rtol=0, atol=0)  # nothing loaded
    report = load_pretrained(model, source, strict_report=False)
    assert "blocks.3.attn.qkv.weight" in report.missing_keys
    deeper = create_model("mae_vit_demo_wide").state_dict()
    with pytest.raises(ValueError, match=r"cls_token: checkpoint \[1, 1, 192\] vs model \[1, 1, 128\]"):
        load_pretrained(model, deeper)
    extra = {**mae_vit_demo().state_dict(), "blocks.4.norm1.weight": torch.ones(128)}
    with pytest.raises(ValueError, match=r"unexpected keys: blocks\.4\.norm1\.weight"):
        load_pretrained(model, extra)


def test_bad_sources_name_the_file(tmp_path):
    model = vit_demo()
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_pretrained(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_pretrained(model, garbage)
    with pytest.raises(TypeError, match="not a state dict"):
        load_pretrained(model, {"epoch": 3, "cls_token": torch.zeros(1, 1, 128)})
    with pytest.raises(TypeError, match="must be a dict"):
        load_pretrained(model, [1, 2])
