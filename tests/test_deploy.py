"""``ultra-export`` / ``ultra.export``: the ONNX file gives what ``segment()`` gives, in onnxruntime, and refuses what
it cannot take; ``ultra-segment --engine onnx`` segments a folder through it without torch or timm."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import needs_offline
from PIL import Image

import ultra
from ultra.cli import export as export_cli
from ultra.data import SyntheticScenes
from ultra.deploy.runtime import OnnxSegmenter, upsample_scores
from ultra.errors import CheckpointError, ConfigError, DataError, MissingExtra
from ultra.files import file_digest
from ultra.readout.segmenter import ClusterReadout

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def scenes(count: int, height: int, width: int, seed: int = 4) -> torch.Tensor:
    """Synthetic scenes (regions with texture, not noise) ``[count, 3, height, width]`` in [0, 1]."""
    data = SyntheticScenes(count, max(height, width), 4, seed=seed)
    return torch.stack([data[i]["image"].float()[:, :height, :width] / 255 for i in range(count)])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's head exported once, by the command."""
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    assert export_cli.run(["--checkpoint", str(tiny_checkpoint), "-o", str(path)]) == path
    return path, tiny_checkpoint


def test_the_onnx_file_gives_segment_s_labels_for_two_sizes_and_a_batch_of_two(exported):
    path, checkpoint = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    model, segmenter = OnnxSegmenter(path), ultra.load(checkpoint)
    for count, height, width in ((2, 64, 96), (2, 112, 64)):
        images = scenes(count, height, width)
        outputs = model.run(images.numpy())
        expected = np.stack([segmenter.segment(image).numpy() for image in images])
        assert outputs["labels"].dtype == np.int64
        assert agreement(outputs["labels"], expected) >= 0.995
        assert outputs["scores"].shape == (count, 3, height // 16, width // 16)
        direct = model.score_classes[upsample_scores(outputs["scores"], (height, width)).argmax(1)]
        assert agreement(direct, outputs["labels"]) >= 0.995  # the scores are what the labels come from


def test_a_matching_that_is_not_the_identity_maps_the_outputs_as_segment_does(tmp_path):
    """Clusters matched out of order and one matched to no class (255): the file's labels are segment()'s."""
    from helpers import TINY_VIT

    from ultra.backbone.vit import FrozenViT
    from ultra.head.projection import ProjectionHead
    from ultra.readout.checkpoint import save_segmenter
    from ultra.readout.segmenter import Segmenter

    torch.manual_seed(1)
    vit = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT)
    head = ClusterReadout([("x", 2), ("k", 1)], torch.randn(3, 8), ProjectionHead(96, 8))
    matching = {"head": torch.tensor([2, -1, 0])}
    segmenter = Segmenter(vit, {"head": head}, ["sky", "road", "car"], resize=64, cluster_to_class=matching)
    save_segmenter(segmenter, tmp_path / "m.safetensors")
    model = OnnxSegmenter(ultra.export(tmp_path / "m.safetensors", tmp_path / "m.onnx"))
    assert model.meta["score_classes"] == [2, 255, 0]
    images = scenes(2, 64, 80, seed=3)
    labels = model.run(images.numpy())["labels"]
    assert agreement(labels, np.stack([segmenter.segment(image).numpy() for image in images])) >= 0.995
    assert len(np.unique(labels)) >= 2


def test_the_metadata_says_what_a_runtime_needs_and_what_made_the_file(exported):
    path, checkpoint = exported
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["ultra"])
    header = json.loads(__import__("safetensors").safe_open(str(checkpoint), "pt").metadata()["ultra"])
    assert meta["classes"] == ["sky", "road", "car"] and meta["readout"] == "head"
    assert meta["score_classes"] == [0, 1, 2] and meta["patch_size"] == 16 and meta["resize"] == 64
    assert meta["normalisation"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert meta["backbone"]["model"] == header["backbone"]["model"]
    assert meta["backbone"]["weights"]["digest"] == header["backbone"]["weights"]["digest"]
    assert meta["ultra_version"] == ultra.__version__ and meta["checkpoint_sha256"] == file_digest(checkpoint)


def test_a_photo_of_any_size_is_segmented_as_segment_does_it(exported):
    """A photo not at the protocol's size and not a patch multiple: resized as segment() resizes it, the scores
    brought back to the photo's size; with and without the flip."""
    path, checkpoint = exported
    model, segmenter = OnnxSegmenter(path), ultra.load(checkpoint)
    photo = (scenes(1, 75, 101, seed=7)[0] * 255).round().byte()
    picture = photo.permute(1, 2, 0).numpy()
    for flip in (False, True):
        labels = model.segment(picture, flip=flip)
        assert agreement(labels, segmenter.segment(photo, flip=flip).numpy()) >= 0.995


def test_a_size_the_model_cannot_take_is_refused_by_name(exported):
    model = OnnxSegmenter(exported[0])
    with pytest.raises(
        DataError, match=r"image size 50x64 is not a multiple of the patch 16 of tiny.onnx; resize to 48x64"
    ):
        model.run(np.zeros((1, 3, 50, 64), np.float32))
    with pytest.raises(DataError, match=r"images must be \[N, 3, H, W\], got \[3, 64, 64\]"):
        model.run(np.zeros((3, 64, 64), np.float32))


def test_an_existing_file_is_kept_and_a_bad_readout_or_checkpoint_is_refused(exported, tmp_path, capsys):
    path, checkpoint = exported
    target = tmp_path / "m.onnx"
    target.write_bytes(b"mine")
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--checkpoint", str(checkpoint), "-o", str(target)])
    assert exit_info.value.code == 2
    assert f"ultra-export: error: {target} exists already; pass --overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"mine"
    with pytest.raises(ConfigError, match=r"no readout 'nope' in this segmenter \(has \['head', 'raw'\]\)"):
        ultra.export(checkpoint, tmp_path / "n.onnx", readout="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # nothing half-written


def test_an_export_without_the_onnx_extra_says_how_to_install_it(tiny_checkpoint, tmp_path, monkeypatch):
    from ultra.deploy import export as export_module

    real = export_module.find_spec
    monkeypatch.setattr(export_module, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    with pytest.raises(MissingExtra, match=r"ultra-export needs onnxscript: pip install 'ultra-seg\[onnx\]'"):
        ultra.export(tiny_checkpoint, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_output_over_the_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ck.safetensors"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(ConfigError, match=r"--output .*ck.safetensors is the checkpoint itself; choose another file"):
        ultra.export(copy, copy, overwrite=True)
    assert copy.read_bytes() == tiny_checkpoint.read_bytes()


def test_the_runtime_refuses_a_missing_file_a_bad_photo_and_a_missing_onnxruntime(exported, tmp_path, monkeypatch):
    model = OnnxSegmenter(exported[0])
    with pytest.raises(DataError, match=r"the image must be \[H, W, 3\] uint8, got \[20, 30\] uint8"):
        model.segment(np.zeros((20, 30), np.uint8))
    with pytest.raises(DataError, match=r"image p.png must be \[H, W, 3\] uint8, got \[20, 30, 3\] float32"):
        model.segment(np.zeros((20, 30, 3), np.float32), what="image p.png")
    with pytest.raises(FileNotFoundError, match=r"exported model .*none.onnx does not exist"):
        OnnxSegmenter(tmp_path / "none.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(
        MissingExtra, match=r"running an exported model needs onnxruntime: pip install 'ultra-seg\[onnx\]'"
    ):
        OnnxSegmenter(exported[0])


def test_a_file_that_is_not_an_exported_segmenter_is_refused_by_name(exported, tmp_path):
    path, checkpoint = exported
    plain = onnx.load(str(path))
    del plain.metadata_props[:]
    onnx.save_model(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(CheckpointError, match=r"plain.onnx is an ONNX model without ultra's metadata"):
        OnnxSegmenter(tmp_path / "plain.onnx")
    plain.metadata_props.add(key="ultra", value=json.dumps({"format": "something-else"}))
    onnx.save_model(plain, str(tmp_path / "other.onnx"))
    with pytest.raises(CheckpointError, match=r"other.onnx is not an exported ultra segmenter .*'something-else'"):
        OnnxSegmenter(tmp_path / "other.onnx")
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable ONNX model|is not a readable ONNX"):
        OnnxSegmenter(checkpoint)


def test_a_readout_that_cannot_be_traced_is_refused_by_name_and_nothing_is_written(
    tiny_checkpoint, tmp_path, monkeypatch
):
    def data_dependent(self, tokens):
        return tokens[..., :3] if bool(tokens.sum() > 0) else tokens[..., 3:6]  # a branch on the values

    monkeypatch.setattr(ClusterReadout, "forward", data_dependent)
    with pytest.raises(
        CheckpointError,
        match=r"readout 'head' \(ClusterReadout\) of backbone vit_tiny_patch16_224 "
        r"cannot be exported to ONNX",
    ):
        ultra.export(tiny_checkpoint, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_segment_engine_onnx_writes_the_torch_engine_s_outputs_without_torch_or_timm(exported, tmp_path):
    path, checkpoint = exported
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(scenes(2, 72, 100, seed=11)):
        Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(photos / f"p{i}.png")
    from ultra.cli import segment as segment_cli

    segment_cli.run(["--checkpoint", str(checkpoint), str(photos), "-o", str(tmp_path / "torch")])
    blocked = "import sys; sys.modules['torch'] = sys.modules['timm'] = None; "
    args = ["--checkpoint", str(path), "--engine", "onnx", str(photos), "-o", str(tmp_path / "onnx")]
    command = f"{blocked}from ultra.cli.segment import main; main({json.dumps(args)})"
    done = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for i in range(2):
        ours, theirs = (np.array(Image.open(tmp_path / engine / f"p{i}.png")) for engine in ("onnx", "torch"))
        assert agreement(ours, theirs) >= 0.995
        assert (tmp_path / "onnx" / f"p{i}_overlay.png").is_file()
    record = json.loads((tmp_path / "onnx" / "ultra-segment.json").read_text())
    assert (
        record["engine"] == "onnx" and record["checkpoint_sha256"] == file_digest(path) and record["readout"] == "head"
    )


def test_segment_engine_onnx_refuses_what_it_would_ignore(exported, tmp_path):
    path, _ = exported
    from ultra.cli import segment as segment_cli

    base = ["--checkpoint", str(path), "--engine", "onnx", str(tmp_path), "-o", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match=r"--crf, --weights: no effect with --engine onnx"):
        segment_cli.run([*base, "--crf", "--weights", "random"])
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"--readout raw: .*tiny.onnx holds readout 'head' only"):
        segment_cli.run([*base, "--readout", "raw"])


@pytest.mark.slow
@needs_offline
def test_the_real_dinov2_backbone_exports_and_agrees_with_segment_on_real_photos(tmp_path):
    """DINOv2-S/14 (the offline weights) under a head on its last two layers: on real CamVid and COCO photos the
    exported file gives segment()'s labels (>= 99.5 % of pixels)."""
    from helpers import realdata

    from ultra.backbone.names import DEFAULT_BACKBONE
    from ultra.backbone.vit import FrozenViT
    from ultra.data.io import list_images, read_image
    from ultra.head.projection import ProjectionHead
    from ultra.readout.checkpoint import save_segmenter
    from ultra.readout.segmenter import Segmenter

    torch.manual_seed(0)
    vit = FrozenViT(DEFAULT_BACKBONE, weights="offline")
    head = ClusterReadout([("x", 10), ("x", 11)], torch.randn(8, 16), ProjectionHead(768, 16))
    segmenter = Segmenter(vit, {"head": head}, [f"c{i}" for i in range(8)], resize=224)
    save_segmenter(segmenter, tmp_path / "real.safetensors")
    model = OnnxSegmenter(ultra.export(tmp_path / "real.safetensors", tmp_path / "real.onnx"))
    photos = (
        list_images(realdata("camvid") / "images")[:2]
        + list_images(realdata("cocostuff-dev") / "cocostuff" / "images" / "val2017")[:2]
    )
    for photo in photos:
        picture = read_image(photo, orient=True)
        expected = segmenter.segment(torch.from_numpy(picture).permute(2, 0, 1)).numpy()
        assert agreement(model.segment(picture), expected) >= 0.995, photo
