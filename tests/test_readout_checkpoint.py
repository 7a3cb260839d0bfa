"""The inference checkpoint: it loads, segments, and refuses what does not fit, naming the field."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY_VIT
from PIL import Image

import ultra
from ultra.data import SyntheticScenes
from ultra.errors import CheckpointError, ConfigError
from ultra.head.projection import ProjectionHead
from ultra.readout.checkpoint import read_checkpoint


def test_loaded_checkpoint_segments_images_at_their_size(trained, tiny_vit):
    root, _, _ = trained
    segmenter = ultra.load(root / "run" / "model.safetensors")
    image = SyntheticScenes(1, 96, 4, seed=5)[0]["image"]
    picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((70, 50))
    labels = segmenter.segment(picture)
    assert labels.shape == (50, 70)
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}
    assert torch.equal(segmenter.segment(torch.from_numpy(np.array(picture)).permute(2, 0, 1)), labels)
    raw = segmenter.segment(picture, readout="raw")
    assert raw.shape == (50, 70)
    small = torch.rand(1, 3, 32, 48)  # one readout's scores are those of all readouts, computed alone
    alone = segmenter.pixel_scores(small, readouts=["raw"])
    assert list(alone) == ["raw"] and torch.allclose(alone["raw"], segmenter.pixel_scores(small)["raw"], atol=1e-6)
    with pytest.raises(ConfigError, match="no readout 'nope'"):
        segmenter.segment(picture, readout="nope")
    with pytest.raises(
        ConfigError,
        match=rf"the image is 3000x10 px: at a shorter side of {segmenter.resize} px its longer "
        r"side would be \d+ px, more than the maximum 2048",
    ):
        segmenter.segment(torch.rand(3, 10, 3000))


def test_bad_checkpoints_are_clear_errors(trained, tmp_path):
    root, _, _ = trained
    good = (root / "run" / "model.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors is not a readable safetensors file"):
        ultra.load(tmp_path / "truncated.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an ultra inference checkpoint"):
        ultra.load(tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "listed.safetensors"), metadata={"ultra": "[1, 2]"})
    with pytest.raises(CheckpointError, match="listed.safetensors: its 'ultra' header is a JSON list, not an object"):
        ultra.load(tmp_path / "listed.safetensors")
    with pytest.raises(CheckpointError, match="last.ckpt is not a readable safetensors"):
        ultra.load(root / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        ultra.load(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match=r"run is a folder; give the checkpoint file in it \(model.safetensors\)"):
        ultra.load(root / "run")


def _crafted(path, source, edit_meta=None, edit_tensors=None):
    """A copy of the checkpoint ``source`` with its header or tensors changed."""
    from safetensors.torch import save_file

    meta, tensors = read_checkpoint(source)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(path), metadata={"ultra": json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    "edit_meta, edit_tensors, message",
    [
        (
            lambda m: m["backbone"]["model_kwargs"].update(checkpoint_path="x.pt"),
            None,
            "model_kwargs 'checkpoint_path' is not allowed",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(num_heads=0),
            None,
            r"model_kwargs 'num_heads' must be an integer in \[1, 128\], got 0",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(patch_size=0),
            None,
            r"model_kwargs 'patch_size' must be an integer in \[1, 64\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(embed_dim=65536),
            None,
            r"model_kwargs 'embed_dim' must be an integer in \[1, 8192\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(depth=65536),
            None,
            r"model_kwargs 'depth' must be an integer in \[1, 64\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(mlp_ratio=-1),
            None,
            r"model_kwargs 'mlp_ratio' must be a number in \(0, 16\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(mlp_ratio=1e9),
            None,
            r"model_kwargs 'mlp_ratio' must be a number in \(0, 16\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(num_heads=5),
            None,
            r"model_kwargs embed_dim 48 is not a multiple of num_heads 5",
        ),
        (
            lambda m: m["backbone"]["weights"].pop("digest"),
            None,
            r"backbone.weights must give its source, location and digest",
        ),
        (
            lambda m: m["backbone"].update(model="vit_no_such_model"),
            None,
            r"backbone.model 'vit_no_such_model' is not a timm model",
        ),
        (
            lambda m: m["backbone"].update(model="vit_tiny_patch16_224.no_such_tag"),
            None,
            r"backbone.model 'vit_tiny_patch16_224.no_such_tag' is not a timm model \(unknown tag 'no_such_tag'",
        ),
        (lambda m: m.update(cluster_to_class=[0, 1]), None, r"cluster_to_class must be a mapping of readout names"),
        (lambda m: m.update(cluster_to_class="head"), None, r"cluster_to_class must be a mapping of readout names"),
        (lambda m: m.update(classes=["a", "a", "b", "c"]), None, r"classes must be distinct names"),
        (
            lambda m: m["backbone"]["model_kwargs"].update(qkv_bias="yes"),
            None,
            r"model_kwargs 'qkv_bias' must be true or false",
        ),
        (
            None,
            lambda t: t.update({"raw_whitened.centroids": torch.zeros(4, 8)}),
            r"raw_whitened.centroids are 8-d, the token map gives 48-d tokens",
        ),
        (
            lambda m: m["readouts"]["head"]["head"].update(out_dim=10**9),
            None,
            r"readouts.head.head.out_dim must be an integer",
        ),
        (
            None,
            lambda t: t.update({"head.head.net.weight": torch.zeros(3, 3)}),
            r"tensor 'head.head.net.weight' is \(3, 3\)",
        ),
        (None, lambda t: t.pop("raw.centroids"), "tensor 'raw.centroids' is missing"),
        (
            None,
            lambda t: t["head.centroids"].__setitem__((1, 2), float("nan")),
            r"tensor 'head.centroids' holds NaN or infinite values",
        ),
        (
            None,
            lambda t: t["raw_whitened.token_map.bias"].__setitem__(0, float("inf")),
            r"tensor 'raw_whitened.token_map.bias' holds NaN",
        ),
        (
            None,
            lambda t: t.update({"raw.centroids": torch.zeros(256, 48)}),
            r"tensor 'raw.centroids' .* matrix of 1 to 255 clusters",
        ),
        (
            lambda m: m["readouts"]["raw_whitened"].update(token_map={"dim": 7}),
            None,
            r"tensor 'raw_whitened.token_map.weight' is \(48, 48\)",
        ),
        (
            lambda m: m["readouts"]["raw_whitened"].update(token_map={"dim": "x"}),
            None,
            r"readouts.raw_whitened.token_map.dim must be an integer",
        ),
        (
            lambda m: m["readouts"]["raw_whitened"].pop("token_map"),
            None,
            r"tensors \['raw_whitened.token_map.bias', 'raw_whitened.token_map.weight'\] belong to no readout",
        ),
        (
            lambda m: m["cluster_to_class"].update(head=[99] * 4),
            None,
            "cluster_to_class.head must give each of the 4 clusters",
        ),
        (lambda m: m["cluster_to_class"].update(head=[0]), None, "cluster_to_class.head must give each"),
        (
            lambda m: m.update(classes=m["classes"][:2]),
            None,
            r"cluster_to_class.head must give each of the 4 clusters a class in \[0, 1\]",
        ),
        (lambda m: m.update(resize=0), None, r"resize must be an integer in \[1, 4096\]"),
        (lambda m: m["readouts"]["head"].update(keys=[["z", 1]]), None, "readouts.head.keys must be a list of"),
        (None, lambda t: t.update({"stray": torch.zeros(1)}), r"tensors \['stray'\] belong to no readout"),
        # every size within its bound, together a 155 billion parameter model, or 16.8 million tokens per image
        (
            lambda m: m["backbone"]["model_kwargs"].update(depth=64, embed_dim=8192, num_heads=64, mlp_ratio=16),
            None,
            r"backbone vit_tiny_patch16_224 with .* has 154.6 billion parameters, more than the 5 billion",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(img_size=4096, patch_size=1),
            None,
            r"backbone .* makes 16777216 patch tokens per image in its position embedding, more than 16384",
        ),
        (
            lambda m: (m["backbone"]["model_kwargs"].update(patch_size=1, img_size=16), m.update(resize=160)),
            None,
            r"backbone .* makes 25600 patch tokens per image at its resize 160 px",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(class_token=False),
            None,
            r"backbone vit_tiny_patch16_224 cannot be built with model_kwargs .*Token pooling needs the class token",
        ),
        # values, not only shapes: what passes must segment
        (
            lambda m: m["cluster_to_class"].update(ghost=[[0, 1], [2]]),
            None,
            r"cluster_to_class.ghost matches clusters of no clustering readout",
        ),
        (
            lambda m: m["cluster_to_class"].update(probe=[0, 1, 2, 3]),
            None,
            r"cluster_to_class.probe matches clusters of no clustering readout",
        ),
        (
            lambda m: m["readouts"]["head"].update(keys=[["x", -1]]),
            None,
            r"readouts.head.keys must be a list of \[token kind in .*, layer \(0-based block\)\]",
        ),
        (
            lambda m: m["readouts"]["head"].update(keys=[["x", True]]),
            None,
            r"readouts.head.keys must be a list of",
        ),
        # checked against the backbone once it is built (one check for every kind of readout)
        (
            lambda m: m["readouts"]["head"].update(keys=[["x", 99]]),
            None,
            r"readouts.head.keys name layers \[99\], .* has 3 blocks",
        ),
        (
            lambda m: m["readouts"]["raw"].update(keys=[["x", 2], ["x", 1]]),
            None,
            r"readouts.raw expects 48-d tokens, .* gives 96-d",
        ),
        (
            lambda m: m["readouts"]["head"].update(keys=[["x", 2], ["x", 1]]),
            None,
            r"readouts.head expects 48-d tokens, .* gives 96-d",
        ),
        (
            lambda m: m["readouts"]["probe"].update(keys=[["x", 2], ["x", 1]]),
            None,
            r"readouts.probe expects 48-d tokens",
        ),
    ],
)
def test_crafted_checkpoint_headers_are_refused_naming_the_field(trained, tmp_path, edit_meta, edit_tensors, message):
    root, _, _ = trained
    path = _crafted(tmp_path / "crafted.safetensors", root / "run" / "model.safetensors", edit_meta, edit_tensors)
    with pytest.raises(CheckpointError, match=rf"crafted.safetensors: {message}"):
        ultra.load(path)


def test_a_checkpoint_for_other_backbone_weights_is_refused(tmp_path):
    from safetensors.torch import save_file

    from ultra.backbone.vit import FrozenViT
    from ultra.readout.checkpoint import save_segmenter
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    state = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    save_file({k: v.contiguous() + 0.01 for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    backbone = FrozenViT("vit_tiny_patch16_224", weights=tmp_path / "a.safetensors", model_kwargs=TINY_VIT)
    segmenter = Segmenter(
        backbone, {"head": ClusterReadout([("x", 2)], torch.randn(3, 8), ProjectionHead(48, 8))}, ["a", "b", "c"]
    )
    save_segmenter(segmenter, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"weights from a file \(a.safetensors, digest [0-9a-f]+\).*weights=PATH"):
        ultra.load(tmp_path / "m.safetensors")  # the checkpoint does not choose the file
    loaded = ultra.load(tmp_path / "m.safetensors", weights=tmp_path / "a.safetensors")
    assert loaded.backbone.weights_info.source == "file"
    with pytest.raises(
        CheckpointError,
        match=r"was trained on vit_tiny_patch16_224 with weights file:.*a.safetensors.*loaded file:.*b.safetensors",
    ):
        ultra.load(tmp_path / "m.safetensors", weights=tmp_path / "b.safetensors")
    for planted in ("/etc/passwd", "../../x.safetensors", str(tmp_path / "a.safetensors")):
        path = _crafted(
            tmp_path / "planted.safetensors",
            tmp_path / "m.safetensors",
            lambda meta: meta["backbone"]["weights"].update(location=planted),  # noqa: B023
            lambda tensors: None,
        )
        with pytest.raises(CheckpointError, match="does not choose which files are read") as refused:
            ultra.load(path)
        assert "exist" not in str(refused.value)  # nothing tells whether the planted file exists


def test_a_checkpoint_written_before_the_renames_loads_and_segments_alike(trained, tmp_path):
    """ultra 0.1 wrote a readout's outputs and a head's architecture as ``kind``: they are read under today's names."""
    root, _, _ = trained
    source = root / "run" / "model.safetensors"

    def old_keys(meta):
        for entry in meta["readouts"].values():
            entry["kind"] = entry.pop("outputs")
            if "head" in entry:
                entry["head"]["kind"] = entry["head"].pop("architecture")

    old = ultra.load(_crafted(tmp_path / "old.safetensors", source, edit_meta=old_keys))
    new = ultra.load(source)
    image = torch.rand(3, 64, 80)
    for readout in new.readouts:
        assert torch.equal(old.segment(image, readout=readout), new.segment(image, readout=readout))
    assert old.readouts["head"].head.architecture == "linear"
