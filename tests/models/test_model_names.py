"""One naming rule: a classifier name and its MAE's select the same architecture (issue 13, item 1)."""

from __future__ import annotations

import pytest
import torch

from ferfast.models import (
    MaskedAutoencoderViT,
    VisionTransformer,
    create_model,
    list_models,
    model_families,
    model_table,
    resolve_model_names,
)


@pytest.mark.parametrize("name", ["vit_demo", "mae_vit_demo", " vit_demo ", "mae_vit_demo\n"])
def test_both_forms_resolve_to_the_same_family(name):
    assert resolve_model_names(name) == ("mae_vit_demo", "vit_demo")


@pytest.mark.parametrize("family", model_families())
def test_every_family_has_an_mae_and_a_classifier(family):
    mae_name, vit_name = resolve_model_names(family)
    assert resolve_model_names(mae_name) == (mae_name, vit_name) == (f"mae_{family}", family)
    assert {mae_name, vit_name} <= set(list_models())


def test_families_are_the_registry_without_the_prefix():
    families = model_families()
    assert "vit_demo" in families and "vit_base_patch16" in families and "vit_large_patch8" in families
    assert not any(f.startswith("mae_") for f in families)
    assert sorted({n.removeprefix("mae_") for n in list_models()}) == families


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("vit_dmeo", "'vit_demo'"),
        ("mae_vit_dmeo", "'vit_demo'"),
        ("mae_mae_vit_demo", "'vit_demo'"),
        ("vit_base_patch32", "'vit_base_patch16'"),
        ("resnet50", None),
        ("mae_", None),
    ],
)
def test_unknown_name_is_one_clear_error(name, suggestion):
    with pytest.raises(ValueError) as e:
        resolve_model_names(name)
    msg = str(e.value)
    assert "\n" not in msg and f"unknown model name {name!r}" in msg
    assert "valid names: " in msg and "vit_demo" in msg and "vit_base_patch16" in msg and "list-models" in msg
    if suggestion:
        assert "did you mean " in msg and suggestion in msg.split("?")[0]
    else:
        assert "did you mean" not in msg


def test_create_model_error_suggests_and_points_to_list_models():
    with pytest.raises(ValueError, match=r"did you mean 'mae_vit_demo'.*list-models"):
        create_model("mae_vit_dmeo")


def test_a_family_with_one_form_names_the_missing_one(monkeypatch):
    from ferfast.models import factory

    monkeypatch.setitem(factory._MODELS, "vit_only_classifier", factory._MODELS["vit_demo"])
    with pytest.raises(ValueError, match=r"has no an? MAE.*'mae_vit_only_classifier' is not registered"):
        resolve_model_names("vit_only_classifier")


def test_model_table_rows_match_the_models_they_name():
    rows = {r.name: r for r in model_table()}
    assert set(rows) == set(model_families())
    demo, base = rows["vit_demo"], rows["vit_base_patch16"]
    assert (demo.embed_dim, demo.depth, demo.num_heads, demo.patch_size, demo.img_size) == (128, 4, 4, 8, 64)
    assert (base.embed_dim, base.depth, base.num_heads, base.patch_size, base.img_size) == (768, 12, 12, 16, 224)
    assert base.decoder == (512, 8, 16) and "ViT-B/16" in base.source and "demo" in demo.source
    assert 85.7 < base.params_m < 85.9  # timm's ViT-B/16: 85.8M with a 7-class head
    for r in rows.values():
        assert r.mae_name == f"mae_{r.name}" and r.mae_params_m > 0 and r.params_m > 0


@pytest.mark.parametrize("row", model_table(), ids=lambda r: r.name)
def test_every_listed_name_builds(row):
    with torch.device("meta"):
        vit = create_model(row.name, num_classes=7)
        mae = create_model(row.mae_name)
    assert isinstance(vit, VisionTransformer) and isinstance(mae, MaskedAutoencoderViT)
    assert sum(p.numel() for p in vit.parameters()) / 1e6 == pytest.approx(row.params_m)
    assert vit.embed_dim == row.embed_dim == mae.blocks[0].attn.qkv.in_features


def test_demo_models_build_and_run_for_real():
    vit, mae = create_model("vit_demo", num_classes=7), create_model("mae_vit_demo")
    x = torch.randn(2, 3, 64, 64)
    assert vit(x).shape == (2, 7)
    assert mae(x)[0].ndim == 0  # the loss
