"""``ultra-select`` and ``ultra-interpret`` on a tiny random ViT: their pictures, and never over their image."""

import numpy as np
import pytest
from helpers import TINY_VIT
from PIL import Image

from ultra.cli import interpret as interpret_cli
from ultra.cli import select as select_cli
from ultra.errors import ConfigError, DataError


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


TINY_ARGS = ["--backbone", "vit_tiny_patch16_224", "--weights", "random", "--size", "48", "--layer", "2"]


@pytest.fixture(autouse=True)
def _tiny_vit_in_commands(monkeypatch):
    from ultra.backbone.vit import FrozenViT

    def tiny(name, weights, layers=None, kinds=None, precision="auto"):
        return FrozenViT(name, weights, layers, kinds, model_kwargs=TINY_VIT, precision=precision)

    monkeypatch.setattr(select_cli, "FrozenViT", tiny)
    monkeypatch.setattr(interpret_cli, "FrozenViT", tiny)


def test_select_command_writes_mask_and_pictures(photo, tmp_path, capsys):
    out = select_cli.run([str(photo), "--point", "30,20", "-o", str(tmp_path / "m.png"), *TINY_ARGS])
    mask = np.array(Image.open(out))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "m_overlay.png").is_file() and (tmp_path / "m_map.png").is_file()
    assert "mask of" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        select_cli.run([str(photo), "--point", "30,20", "-o", str(tmp_path / "m.png"), *TINY_ARGS])
    with pytest.raises(ValueError, match="--point must be X,Y"):
        select_cli.run([str(photo), "--point", "30", "-o", str(tmp_path / "n.png"), *TINY_ARGS])
    with pytest.raises(SystemExit) as exit_info:
        select_cli.main([str(photo), "--point", "500,20", "-o", str(tmp_path / "k.png"), *TINY_ARGS])
    assert exit_info.value.code == 2 and "outside the 70x50 image" in capsys.readouterr().err


def test_interpret_command_writes_segments_and_sheet(photo, tmp_path):
    sheet = interpret_cli.run([str(photo), "-o", str(tmp_path / "out"), "--segments", "3", *TINY_ARGS])
    segments = np.array(Image.open(tmp_path / "out" / "photo_segments.png"))
    assert segments.shape == (50, 70) and segments.max() <= 2
    assert Image.open(sheet).size[0] > 600


def test_interpret_clusters_the_relevance_maps_alone_or_by_kmeans_when_asked(photo, tmp_path):
    out = tmp_path / "out"
    interpret_cli.run([str(photo), "-o", str(out), "--segments", "3", "--maps", "relevance", *TINY_ARGS])
    alone = np.array(Image.open(out / "photo_segments.png"))
    interpret_cli.run([str(photo), "-o", str(out), "--segments", "3", "--overwrite", *TINY_ARGS])
    assert not np.array_equal(alone, np.array(Image.open(out / "photo_segments.png")))  # product maps: other cuts
    args = [str(photo), "-o", str(out), "--segments", "3", "--clustering", "kmeans", "--overwrite", *TINY_ARGS]
    interpret_cli.run(args)
    assert np.array(Image.open(out / "photo_segments.png")).max() <= 2
    with pytest.raises(ValueError, match="--clustering kmeans needs --segments K"):
        interpret_cli.run([str(photo), "-o", str(out), "--clustering", "kmeans", "--overwrite", *TINY_ARGS])


def test_interpret_writes_more_than_256_segment_ids_without_wrapping(photo, tmp_path):
    """Segment ids above 255 go to a 16-bit PNG (in 8 bits, id 256 would read back as 0)."""
    interpret_cli.run(
        [
            str(photo),
            "-o",
            str(tmp_path / "out"),
            "--segments",
            "289",
            "--stride",
            "1",
            *TINY_ARGS[:-3],
            "272",
            "--layer",
            "2",
        ]
    )
    segments = np.array(Image.open(tmp_path / "out" / "photo_segments.png"))
    assert segments.dtype == np.uint16 and segments.max() > 255 and len(np.unique(segments)) > 256


def test_select_never_writes_over_its_image(photo, tmp_path):
    before = photo.read_bytes()
    with pytest.raises(DataError, match=r"output .*photo.png is the input .*photo.png"):
        select_cli.run(
            [str(photo), "--point", "30,20", "-o", str(photo.with_suffix(".png")), "--overwrite", *TINY_ARGS]
        )
    assert photo.read_bytes() == before


@pytest.mark.parametrize("option", ["--checkpoint", "--weights"])
def test_select_never_writes_over_its_checkpoint_or_weights(photo, tmp_path, tiny_checkpoint, option):
    given = tmp_path / "given.safetensors"
    given.write_bytes(tiny_checkpoint.read_bytes())
    before = given.read_bytes()
    with pytest.raises(DataError, match=r"output .*given.safetensors is the input"):
        select_cli.run([str(photo), "--point", "30,20", "-o", str(given), option, str(given), "--overwrite"])
    assert given.read_bytes() == before


def test_select_with_a_checkpoint_selects_the_clicked_pixels_head_cluster_in_its_connected_part(
    photo, tmp_path, tiny_checkpoint
):
    from scipy.ndimage import label

    from ultra import load
    from ultra.analysis.segments import select_cluster
    from ultra.data.io import read_image
    from ultra.data.transforms import image_to_tensor

    args = [str(photo), "--point", "30,20", "--checkpoint", str(tiny_checkpoint), "--size", "48", "--weights", "random"]
    out = select_cli.run([*args, "--method", "clusters", "-o", str(tmp_path / "m.png")])
    mask = np.array(Image.open(out)) > 0
    _, clusters = select_cluster(load(tiny_checkpoint), image_to_tensor(read_image(photo)), (30, 20), size=48)
    same = clusters.numpy() == clusters[20, 30].item()
    parts, _ = label(same, structure=np.ones((3, 3)))
    assert mask[20, 30] and np.array_equal(mask, parts == parts[20, 30])
    assert (tmp_path / "m_overlay.png").is_file() and (tmp_path / "m_map.png").is_file()
    for extra in (["--threshold", "0.5"], ["--layer", "1"]):
        with pytest.raises(ValueError, match=f"{extra[0]}: no effect with --method clusters"):
            select_cli.run([*args, "--method", "clusters", "-o", str(tmp_path / "n.png"), *extra])
    with pytest.raises(ValueError, match="--backbone: no effect with --checkpoint"):
        select_cli.run([*args, "-o", str(tmp_path / "n.png"), "--backbone", "vit_small_patch16_224"])
    assert not (tmp_path / "n.png").exists()


def test_select_by_each_method_and_refuses_what_a_method_cannot_use(photo, tmp_path, tiny_checkpoint):
    args = [str(photo), "--point", "30,20", "--size", "48"]
    masks = {}
    for method in ("similarity", "relevance"):  # on the checkpoint's backbone
        out = tmp_path / f"{method}.png"
        select_cli.run([*args, "--method", method, "--checkpoint", str(tiny_checkpoint), "-o", str(out)])
        masks[method] = np.array(Image.open(out))
        assert masks[method][20, 30] == 255
    assert not np.array_equal(masks["similarity"], masks["relevance"])
    with pytest.raises(ValueError, match="--method clusters needs --checkpoint"):
        select_cli.run([*args, "--method", "clusters", "-o", str(tmp_path / "c.png")])
    with pytest.raises(ValueError, match="--method must be one of similarity, clusters, relevance, got 'cosine'"):
        select_cli.run([*args, "--method", "cosine", "-o", str(tmp_path / "c.png")])
    assert not (tmp_path / "c.png").exists()


def test_select_messages_say_what_was_wrong(photo, tmp_path):
    out = ["-o", str(tmp_path / "m.png")]
    with pytest.raises(ConfigError, match=r"point \(-0.5, 3.0\) is outside the .* image"):
        select_cli.run([str(photo), "--point", "-0.5,3", *out, *TINY_ARGS])
    tiny = [a for a in TINY_ARGS if a not in ("--size", "48")]
    with pytest.raises(ConfigError, match="above the maximum side 2048"):
        select_cli.run([str(photo), "--point", "3,3", *out, *tiny, "--size", "100000"])
    with pytest.raises(
        ConfigError, match="--size 8 gives a shorter side of at most one 16 px patch: nothing to select"
    ):
        select_cli.run([str(photo), "--point", "3,3", *out, *tiny, "--size", "8"])
    assert not (tmp_path / "m.png").exists()
