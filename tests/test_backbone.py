"""The frozen ViT: its grids against a plain forward, requested tensors only, weights from files, clear errors."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_VIT

from ultra.backbone.image_size import snap_to_patch
from ultra.backbone.names import resolve_model_name
from ultra.backbone.vit import FrozenViT
from ultra.errors import UnknownModelError, WeightsError


def _reference_tokens(vit: FrozenViT, images: torch.Tensor) -> tuple[list, list]:
    """Block outputs and qkv outputs of a plain forward through timm's modules."""
    m = vit.model
    x = m.norm_pre(m._pos_embed(m.patch_embed(vit.normalize(images))))
    outs, qkvs = [], []
    for blk in m.blocks:
        qkvs.append(blk.attn.qkv(blk.norm1(x)))
        x = blk(x)
        outs.append(x)
    return outs, qkvs


def test_grids_match_plain_forward(tiny_vit):
    images = torch.rand(2, 3, 48, 64)
    feats = tiny_vit(images)
    outs, qkvs = _reference_tokens(tiny_vit, images)
    p, d = tiny_vit.num_prefix_tokens, tiny_vit.embed_dim
    assert feats.grid_size == (3, 4)
    for layer in range(3):
        assert torch.allclose(feats["x", layer], outs[layer][:, p:].reshape(2, 3, 4, d), atol=1e-5)
        for j, kind in enumerate("qkv"):
            ref = qkvs[layer][..., j * d : (j + 1) * d]
            assert feats[kind, layer].shape == (2, 3, 4, d)
            assert torch.allclose(feats[kind, layer], ref[:, p:].reshape(2, 3, 4, d), atol=1e-5)
            assert torch.allclose(feats.prefix[kind][layer], ref[:, :p], atol=1e-5)
        assert torch.allclose(feats.prefix["x"][layer], outs[layer][:, :p], atol=1e-5)


def test_normed_tokens_are_block_outputs_through_the_final_layernorm(tiny_vit):
    feats = tiny_vit(torch.rand(2, 3, 32, 48), layers=[1, 2], kinds=["x", "n"])
    for layer in (1, 2):
        expected = tiny_vit.model.norm(feats[("x", layer)])
        assert torch.allclose(feats[("n", layer)], expected, atol=1e-6)
        assert not torch.allclose(feats[("n", layer)], feats[("x", layer)])
    assert feats.prefix["n"][2].shape == feats.prefix["x"][2].shape


def test_only_requested_tensors_are_kept_and_later_blocks_not_run(tiny_vit):
    calls = []
    hook = tiny_vit.model.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        feats = tiny_vit(torch.rand(1, 3, 32, 32), layers=[1], kinds=["q"])
    finally:
        hook.remove()
    assert feats.keys() == [("q", 1)]
    assert calls == []
    assert all(len(b.attn.qkv._forward_hooks) == 0 for b in tiny_vit.model.blocks)
    with pytest.raises(KeyError, match="not computed"):
        feats["x", 1]


def test_negative_layers_and_frozen_state(tiny_vit):
    feats = tiny_vit(torch.rand(1, 3, 32, 32), layers=[-1], kinds=["x"])
    assert feats.keys() == [("x", 2)]
    tiny_vit.train()
    assert not tiny_vit.model.training
    assert not any(p.requires_grad for p in tiny_vit.parameters())


def test_register_tokens_are_prefix():
    vit = FrozenViT("vit_small_patch14_reg4_dinov2", weights="random", model_kwargs=TINY_VIT)
    feats = vit(torch.rand(1, 3, 28, 42))
    assert vit.num_prefix_tokens == 5
    assert feats.prefix["k"][0].shape == (1, 5, 48)
    assert feats["k", 0].shape == (1, 2, 3, 48)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda v: v(torch.rand(1, 3, 30, 32)), "not a multiple of the patch size 16"),
        (lambda v: v(torch.rand(1, 3, 8, 32)), "smaller than one 16x16 patch"),
        (lambda v: v(torch.rand(1, 32, 32)), r"images must be \[B, 3, H, W\]"),
        (lambda v: v(torch.rand(1, 3, 32, 32), layers=[3]), "layer 3 is out of range .* 3 blocks"),
        (lambda v: v(torch.rand(1, 3, 32, 32), kinds=["keys"]), "token kinds must be among"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_vit, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_vit)


def test_unknown_model_names_suggest_close_matches():
    with pytest.raises(UnknownModelError, match="unknown model 'dino_vits9'.*did you mean.*dino_vits8"):
        resolve_model_name("dino_vits9")
    assert resolve_model_name("dinov2_vits14") == "vit_small_patch14_dinov2.lvd142m"
    with pytest.raises(UnknownModelError, match="not a (timm )?ViT"):
        FrozenViT("resnet18", weights="random")


@pytest.mark.parametrize(
    "name, patch, dim, prefix",
    [
        ("dino_vits8", 8, 384, 1),
        ("dino_vits16", 16, 384, 1),
        ("dino_vitb8", 8, 768, 1),
        ("dino_vitb16", 16, 768, 1),
        ("dinov2_vits14", 14, 384, 1),
        ("dinov2_vitb14", 14, 768, 1),
        ("dinov2_vits14_reg", 14, 384, 5),
    ],
)
def test_the_field_s_backbones_give_their_grids(name, patch, dim, prefix):
    vit = FrozenViT(name, weights="random", model_kwargs={"depth": 2})
    assert (vit.patch_size, vit.embed_dim, vit.num_prefix_tokens) == (patch, dim, prefix)
    feats = vit(torch.rand(1, 3, 2 * patch, 3 * patch))
    assert feats["q", 1].shape == (1, 2, 3, dim) and feats.prefix["v"][0].shape == (1, prefix, dim)


def test_random_weights_are_reproducible():
    a = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT)
    torch.manual_seed(123)
    b = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_snap_to_patch():
    assert snap_to_patch((320, 320), 14) == (322, 322)
    assert snap_to_patch((5, 100), 16) == (16, 96)


# --- weight sources -----------------------------------------------------------------------------


def _tiny(weights):
    return FrozenViT("vit_tiny_patch16_224", weights=weights, model_kwargs=TINY_VIT)


def test_local_safetensors_and_torch_files_load_exactly(tmp_path, tiny_vit):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_vit.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "dino_style.pth")
    for name in ("w.safetensors", "dino_style.pth"):
        vit = _tiny(tmp_path / name)
        assert vit.weights_info.source == "file"
        for key, value in vit.model.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_weights_that_do_not_fit_name_the_keys(tmp_path, tiny_vit):
    state = dict(tiny_vit.model.state_dict())
    state.pop("blocks.0.attn.qkv.weight")
    state["extra.weight"] = torch.zeros(1)
    state["blocks.1.mlp.fc1.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        WeightsError,
        match=r"missing keys \['blocks.0.attn.qkv.weight'\].*unexpected keys \['extra.weight'\]"
        r".*blocks.1.mlp.fc1.bias: file \(7,\)",
    ):
        _tiny(tmp_path / "bad.pt")


class _Evil:
    pass


def test_pickled_objects_and_broken_files_are_refused(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "pickled.pt")
    with pytest.raises(WeightsError, match="cannot read weights file .*pickled.pt"):
        _tiny(tmp_path / "pickled.pt")
    (tmp_path / "truncated.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsError, match="cannot read weights file .*truncated.safetensors"):
        _tiny(tmp_path / "truncated.safetensors")
    with pytest.raises(WeightsError, match="does not exist"):
        _tiny(tmp_path / "missing.pt")


def test_no_weight_source_says_what_was_tried():
    with pytest.raises(WeightsError) as err:
        FrozenViT("dino_vits16", model_kwargs=TINY_VIT)
    text = str(err.value)
    assert "hub: the Hugging Face hub cannot be reached" in text
    assert "offline: the offline source only provides vit_small_patch14_dinov2" in text
    assert "weights=PATH" in text


def test_forward_is_deterministic_under_batching(tiny_vit):
    images = torch.rand(3, 3, 32, 48)
    whole = tiny_vit(images, kinds=["v"])
    single = tiny_vit(images[1:2], kinds=["v"])
    assert F.cosine_similarity(whole["v", 2][1:2].flatten(), single["v", 2].flatten(), dim=0) > 0.9999
