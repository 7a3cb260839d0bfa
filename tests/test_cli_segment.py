"""``ultra-segment``: pictures and label maps, never over its inputs, bad images named, the CRF and the device
checked."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY_VIT, without_crf
from PIL import Image

from ultra.backbone.precision import resolve_precision
from ultra.cli import evaluate as eval_cli
from ultra.cli import segment as segment_cli
from ultra.data import SyntheticScenes
from ultra.errors import CheckpointError, ConfigError, CRFUnavailable, DataError
from ultra.files import file_digest


def test_segment_command_writes_pictures_and_refuses_to_overwrite(trained, tmp_path):
    root, _, _ = trained
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.fromarray(SyntheticScenes(2, 96, 4, seed=9)[i]["image"].permute(1, 2, 0).numpy()).save(
            images / f"p{i}.jpg"
        )
    written = segment_cli.run(
        ["--checkpoint", str(root / "run" / "model.safetensors"), str(images), "-o", str(tmp_path / "out")]
    )
    assert [p.name for p in written] == ["p0.png", "p1.png"]
    label = np.array(Image.open(written[0]))
    assert label.shape == (96, 96) and label.dtype == np.uint8
    assert (tmp_path / "out" / "p0_overlay.png").is_file()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        segment_cli.run(
            ["--checkpoint", str(root / "run" / "model.safetensors"), str(images), "-o", str(tmp_path / "out")]
        )
    segment_cli.run(
        [
            "--checkpoint",
            str(root / "run" / "model.safetensors"),
            str(images / "p1.jpg"),
            "-o",
            str(tmp_path / "out"),
            "--overwrite",
        ]
    )


def test_segment_never_writes_over_inputs_and_survives_bad_images(trained, tmp_path):
    root, _, _ = trained
    checkpoint = str(root / "run" / "model.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    picture = SyntheticScenes(1, 96, 4, seed=9)[0]["image"].permute(1, 2, 0).numpy()
    Image.fromarray(picture).save(photos / "a.png")
    before = (photos / "a.png").read_bytes()
    with pytest.raises(DataError, match=r"output .*a.png is the input .*a.png; choose another output"):
        segment_cli.run(["--checkpoint", checkpoint, str(photos), "-o", str(photos), "--overwrite"])
    assert (photos / "a.png").read_bytes() == before
    Image.fromarray(picture).save(photos / "a.jpg")
    with pytest.raises(DataError, match=r"a.jpg and .*a.png would both write .*out/a.png"):
        segment_cli.run(["--checkpoint", checkpoint, str(photos), "-o", str(tmp_path / "out")])
    (photos / "a.jpg").unlink()
    Image.fromarray(picture).save(photos / "a_overlay.png")  # its labels would replace a's overlay
    with pytest.raises(DataError, match=r"a.png and .*a_overlay.png would both write .*out/a_overlay.png"):
        segment_cli.run(["--checkpoint", checkpoint, str(photos), "-o", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    (photos / "a_overlay.png").unlink()
    Image.fromarray(picture).save(photos / "b.png")
    (photos / "c.png").write_bytes(b"not a picture")
    Image.fromarray(np.zeros((20, 2000, 3), np.uint8)).save(photos / "d.png")  # 32000 px wide at 320
    with pytest.raises(DataError, match="2 of 4 images could not be segmented"):
        segment_cli.run(["--checkpoint", checkpoint, str(photos), "-o", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").glob("?.png")) == ["a.png", "b.png"]
    (photos / "c.png").unlink()
    (photos / "d.png").unlink()
    Image.fromarray(picture).save(photos / "e.png")
    written = segment_cli.run(["--checkpoint", checkpoint, str(photos), "-o", str(tmp_path / "out"), "--skip_existing"])
    assert [p.name for p in written] == ["e.png"]  # a and b were done: a killed batch resumes
    (tmp_path / "out" / "b.png").unlink()  # killed between b's overlay and its label map: b is not done
    written = segment_cli.run(["--checkpoint", checkpoint, str(photos), "-o", str(tmp_path / "out"), "--skip_existing"])
    assert [p.name for p in written] == ["b.png"] and (tmp_path / "out" / "b_overlay.png").is_file()


def test_console_entry_reports_user_errors_without_a_traceback(trained, tmp_path, capsys):
    root, _, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        segment_cli.main(
            [
                "--checkpoint",
                str(root / "run" / "model.safetensors"),
                str(tmp_path / "missing"),
                "-o",
                str(tmp_path / "o"),
            ]
        )
    assert exit_info.value.code == 2
    assert "ultra-segment: error:" in capsys.readouterr().err


def test_eval_and_segment_refuse_crf_without_the_package(trained, tmp_path, monkeypatch):
    root, config, _ = trained
    without_crf(monkeypatch)
    checkpoint = str(root / "run" / "model.safetensors")
    with pytest.raises(CRFUnavailable, match=r"--crf needs the dense CRF: pip install 'ultra-seg\[crf\]'"):
        eval_cli.run(["--checkpoint", checkpoint, "--config", str(config), "--crf", "--output", str(tmp_path / "e")])
    picture = tmp_path / "p.jpg"
    Image.fromarray(SyntheticScenes(1, 64, 4, seed=3)[0]["image"].permute(1, 2, 0).numpy()).save(picture)
    with pytest.raises(CRFUnavailable, match=r"--crf needs the dense CRF"):
        segment_cli.run(["--checkpoint", checkpoint, str(picture), "-o", str(tmp_path / "s"), "--crf"])
    assert not (tmp_path / "e").exists() and not (tmp_path / "s").exists()


def _png_claiming(path, width: int, height: int) -> None:
    """A small PNG whose header (IHDR) claims ``width x height`` pixels."""
    import struct
    import zlib

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_segment_refuses_a_decompression_bomb_by_name_and_goes_on(trained, tmp_path):
    root, _, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    _png_claiming(photos / "a_bomb.png", 40000, 40000)
    Image.fromarray(SyntheticScenes(1, 96, 4, seed=3)[0]["image"].permute(1, 2, 0).numpy()).save(photos / "b.png")
    with pytest.raises(DataError, match=r"1 of 2 images could not be segmented \(first: .*a_bomb.png\)"):
        segment_cli.run(
            ["--checkpoint", str(root / "run" / "model.safetensors"), str(photos), "-o", str(tmp_path / "out")]
        )
    assert (tmp_path / "out" / "b.png").is_file() and not (tmp_path / "out" / "a_bomb.png").exists()
    from ultra.data.io import read_image

    with pytest.raises(DataError, match=r"image .*a_bomb.png is refused: .*1600000000 pixels"):
        read_image(photos / "a_bomb.png")


def test_a_photo_is_segmented_as_its_exif_orientation_shows_it(trained, tmp_path):
    """A photo stored 100 x 80 with EXIF orientation 6 (turned 90 degrees) is shown 80 wide, 100 high."""
    root, _, _ = trained
    stored = SyntheticScenes(1, 96, 4, seed=4)[0]["image"].permute(1, 2, 0).numpy()[:80]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored[:, :96])).resize((100, 80)).save(tmp_path / "turned.jpg", exif=exif)
    written = segment_cli.run(
        [
            "--checkpoint",
            str(root / "run" / "model.safetensors"),
            str(tmp_path / "turned.jpg"),
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert np.array(Image.open(written[0])).shape == (100, 80)
    assert Image.open(tmp_path / "out" / "turned_overlay.png").size == (80, 100)


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", r"--device 'foo' is not a device"),
        ("cuda", r"--device cuda: this machine has no cuda device"),
    ],
)
def test_segment_refuses_a_device_it_cannot_use(tmp_path, checkpoint, device, message):

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model, _ = checkpoint
    from ultra.cli import segment as segment_cli

    with pytest.raises(ConfigError, match=message):
        segment_cli.run(["--checkpoint", str(model), str(tmp_path), "-o", str(tmp_path / "out"), "--device", device])


def test_a_folder_of_segmentations_is_one_experiment(tiny_checkpoint, trained, tmp_path):
    """ultra-segment.json records what made the folder; a resume or a second batch with other settings is refused."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for i, name in enumerate("abc"):
        Image.fromarray(SyntheticScenes(3, 64, 4, seed=9)[i]["image"].permute(1, 2, 0).numpy()).save(
            photos / f"{name}.png"
        )
    (photos / "c.png").rename(tmp_path / "c.png")  # c comes in a second batch
    base = ["--checkpoint", str(tiny_checkpoint), str(photos), "-o", str(out)]
    segment_cli.run(base)
    record = json.loads((out / "ultra-segment.json").read_text())
    auto = resolve_precision("auto", "cpu")
    assert record == {
        "checkpoint_sha256": file_digest(tiny_checkpoint),
        "engine": "torch",
        "readout": "head",
        "crf": False,
        "flip": False,
        "precision": auto,
    }
    (out / "b.png").unlink()  # killed before b's label map
    other_precision = "bf16" if auto == "fp32" else "fp32"
    for other, differ in (
        (["--flip"], "flip False there, True now"),
        (["--readout", "raw"], "readout 'head'"),
        (["--precision", other_precision], f"precision '{auto}' there, '{other_precision}' now"),
    ):
        with pytest.raises(ConfigError, match=f"other settings \\({differ}"):
            segment_cli.run([*base, "--skip_existing", *other])
    another = str(trained[0] / "run" / "model.safetensors")
    with pytest.raises(ConfigError, match="other settings \\(checkpoint_sha256"):
        segment_cli.run(["--checkpoint", another, *base[2:], "--skip_existing"])
    assert not (out / "b.png").exists()  # nothing written by a refused resume
    assert [p.name for p in segment_cli.run([*base, "--skip_existing"])] == ["b.png"]
    second = ["--checkpoint", str(tiny_checkpoint), str(tmp_path / "c.png"), "-o", str(out), "--readout", "raw"]
    with pytest.raises(ConfigError, match="or pass --overwrite"):  # a second batch with another readout
        segment_cli.run(second)
    with pytest.raises(ConfigError, match=r"would leave 2 image\(s\) of the earlier settings .*a.png"):
        segment_cli.run([*second, "--overwrite"])
    (tmp_path / "c.png").rename(photos / "c.png")
    segment_cli.run([*base, "--readout", "raw", "--overwrite"])  # every image again: the folder is raw's now
    assert json.loads((out / "ultra-segment.json").read_text())["readout"] == "raw"
    with pytest.raises(ConfigError, match="no readout 'probe'"):
        segment_cli.run([*base, "--readout", "probe", "--overwrite"])
    (out / "ultra-segment.json").unlink()  # outputs of unknown origin
    with pytest.raises(ConfigError, match="no ultra-segment.json saying what made them"):
        segment_cli.run([*base, "--skip_existing", "--readout", "raw"])
    (out / "ultra-segment.json").write_text('{"readout": ')
    with pytest.raises(DataError, match="ultra-segment.json is damaged"):
        segment_cli.run([*base, "--skip_existing"])


def test_a_checkpoint_trained_on_a_weights_file_segments_with_the_file_the_user_passes(tmp_path):
    from safetensors.torch import save_file

    from ultra.backbone.vit import FrozenViT
    from ultra.head.projection import ProjectionHead
    from ultra.readout.checkpoint import save_segmenter
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    state = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vit.safetensors"))
    backbone = FrozenViT("vit_tiny_patch16_224", weights=tmp_path / "vit.safetensors", model_kwargs=TINY_VIT)
    head = ClusterReadout([("x", 2)], torch.randn(3, 8), ProjectionHead(48, 8))
    checkpoint = save_segmenter(Segmenter(backbone, {"head": head}, ["a", "b", "c"], resize=64), tmp_path / "m.st")
    photo = tmp_path / "p.png"
    Image.fromarray(SyntheticScenes(1, 64, 4, seed=9)[0]["image"].permute(1, 2, 0).numpy()).save(photo)
    args = ["--checkpoint", str(checkpoint), str(photo), "-o", str(tmp_path / "out")]
    with pytest.raises(CheckpointError, match="pass that file"):
        segment_cli.run(args)
    assert [p.name for p in segment_cli.run([*args, "--weights", str(tmp_path / "vit.safetensors")])] == ["p.png"]
