import numpy as np
import pytest
import torch
from helpers import TINY_VIT
from PIL import Image

from ultra.analysis.relevance import RelevanceMaps
from ultra.analysis.segments import (
    cluster_maps,
    mask_from_map,
    otsu_threshold,
    point_token,
    segments_from_maps,
    select,
    token_pixels,
)
from ultra.cli import interpret as interpret_cli
from ultra.cli import select as select_cli
from ultra.errors import DataError


def _planted_maps():
    """Maps of a 4x6 grid whose tokens belong to a left and a right object: each map lights up its own object."""
    left = torch.zeros(4, 6)
    left[:, :3] = 1
    right = 1 - left
    g = torch.Generator().manual_seed(0)
    maps = torch.stack([(left if t % 6 < 3 else right) + 0.05 * torch.rand(4, 6, generator=g) for t in range(24)])
    return RelevanceMaps(maps, torch.arange(24), 1, (4, 6)), left


def test_maps_cluster_into_the_planted_objects_and_segment_pixels():
    result, left = _planted_maps()
    ids = cluster_maps(result.maps, num_segments=2)
    assert len(set(ids[left.flatten() > 0].tolist())) == 1 and len(set(ids.tolist())) == 2
    assert torch.equal(cluster_maps(result.maps, distance_threshold=0.5), ids)
    segments, summed = segments_from_maps(result, (40, 60), num_segments=2)
    assert segments.shape == (40, 60) and summed.shape == (2, 4, 6)
    assert segments[:, :25].unique().numel() == 1 and segments[:, 35:].unique().numel() == 1
    assert segments[0, 0] != segments[0, -1]
    with pytest.raises(ValueError, match="exactly one of"):
        cluster_maps(result.maps)


def test_otsu_splits_a_bimodal_sample_and_masks_follow():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(500, generator=g) * 0.1, 3 + torch.randn(200, generator=g) * 0.1])
    cut = otsu_threshold(values)
    assert torch.equal(values >= cut, torch.arange(700) >= 500)  # any cut in the gap is optimal: check the split
    grid = torch.zeros(4, 4)
    grid[1:3, 1:3] = 1.0
    mask = mask_from_map(grid, (40, 40))
    assert mask[20, 20] and not mask[2, 2]
    assert mask_from_map(grid, (40, 40), threshold=0.9).sum() < mask.sum()
    with pytest.raises(ValueError, match="threshold must be 'otsu' or a fraction"):
        mask_from_map(grid, (40, 40), threshold=2.0)


def test_point_token_and_its_errors():
    assert point_token((0, 0), (100, 200), (5, 10)) == 0
    assert point_token((199.9, 99.9), (100, 200), (5, 10)) == 49
    assert point_token((25, 45), (100, 200), (5, 10)) == 2 * 10 + 1
    with pytest.raises(ValueError, match=r"point \(200, 5\) is outside the 200x100 image"):
        point_token((200, 5), (100, 200), (5, 10))


def test_token_pixels_are_the_pixels_point_token_maps_to_it():
    size, grid = (50, 70), (4, 6)
    owner = torch.tensor([[point_token((x, y), size, grid) for x in range(70)] for y in range(50)])
    for token in (0, 9, 23):
        assert torch.equal(token_pixels(token, size, grid), owner == token)


def test_the_clicked_pixel_always_belongs_to_the_selected_object():
    """A click at a token's border, where bilinear upsampling mixes in the weaker neighbours, still selects it."""
    from ultra.backbone.vit import FrozenViT

    vit = FrozenViT("vit_tiny_patch16_224", weights="random")  # 12 random blocks: noisy maps
    image = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(0))
    misses = 0
    for x, y in [(45, 25), (12, 37), (69, 0), (23, 12)]:
        mask, values = select(vit, image, (x, y), layer=11, size=64)
        misses += not bool(mask_from_map(values, (50, 70))[y, x])
        assert mask[y, x], (x, y)
    assert misses  # some of these clicks fall outside the thresholded map alone


def test_select_on_a_tiny_model(tiny_vit):
    image = torch.rand(3, 40, 60)
    mask, values = select(tiny_vit, image, (30, 20), layer=2, size=32)
    assert mask.shape == (40, 60) and mask.dtype == torch.bool and 0 < mask.sum() < mask.numel()
    assert values.shape == (2, 3)
    with pytest.raises(ValueError, match="outside the 60x40 image"):
        select(tiny_vit, image, (61, 5), size=32)
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        select(tiny_vit, torch.rand(3, 10, 60), (5, 5))
    with pytest.raises(
        ValueError,
        match=r"image is 2000x20 px: at a shorter side of 32 px its longer side would be "
        r"3200 px, more than the maximum 2048 \(an aspect ratio above 64.0\)",
    ):
        select(tiny_vit, torch.rand(3, 20, 2000), (5, 5), size=32)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        select(tiny_vit, image, (5, 5), layer=9, size=32)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


TINY_ARGS = ["--backbone", "vit_tiny_patch16_224", "--weights", "random", "--size", "48", "--layer", "2"]


@pytest.fixture(autouse=True)
def _tiny_vit_in_commands(monkeypatch):
    from ultra.backbone.vit import FrozenViT

    def tiny(name, weights, layers, kinds):
        return FrozenViT(name, weights, layers, kinds, model_kwargs=TINY_VIT)

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


def test_a_small_object_is_not_swallowed_by_a_large_background():
    obj = torch.zeros(4, 6)
    obj[:2, :2] = 1
    background = (1 - obj) + 0.3 * obj  # the background tokens' maps leak onto the object
    maps = torch.stack([obj if obj.flatten()[t] else background for t in range(24)])
    result = RelevanceMaps(maps, torch.arange(24), 1, (4, 6))
    segments, _ = segments_from_maps(result, (4, 6), num_segments=2)
    assert segments[0, 0] != segments[3, 5]  # raw sums would give the 20-token cluster every pixel
    assert (segments == segments[0, 0]).sum() == 4


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
