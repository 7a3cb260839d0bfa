"""Segments and clicked objects from relevance maps: planted objects, Otsu's threshold, the clicked pixel kept."""

import numpy as np
import pytest
import torch

from ultra.analysis.masks import mask_from_map, otsu_threshold
from ultra.analysis.points import point_token, region_under, token_pixels
from ultra.analysis.relevance import RelevanceMaps
from ultra.analysis.segments import (
    click_map,
    cluster_maps,
    cosine_maps,
    default_block,
    segments_from_maps,
    select,
    select_cluster,
    select_object,
    similarity_maps,
    similarity_weighted,
)
from ultra.errors import ConfigError


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


@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_clusters_maps_into_the_planted_objects_and_needs_a_number_of_segments(seed):
    result, left = _planted_maps()
    ids = cluster_maps(result.maps, num_segments=2, clustering="kmeans", seed=seed)
    assert len(set(ids[left.flatten() > 0].tolist())) == 1 and len(set(ids[left.flatten() == 0].tolist())) == 1
    assert ids.unique().tolist() == [0, 1]
    segments, _ = segments_from_maps(result, (40, 60), num_segments=2, clustering="kmeans", seed=seed)
    assert segments[:, :25].unique().numel() == 1 and segments[0, 0] != segments[0, -1]
    with pytest.raises(ConfigError, match="needs a number of segments"):
        cluster_maps(result.maps, distance_threshold=0.5, clustering="kmeans")
    with pytest.raises(ConfigError, match="clustering must be one of"):
        cluster_maps(result.maps, num_segments=2, clustering="ward")


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
        mask, values = select(vit, image, (x, y), layer=11, size=64, by="relevance")
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


def test_select_keeps_the_thresholded_map_to_its_connected_part_under_the_click(tiny_vit, monkeypatch):
    from ultra.analysis import segments

    planted = torch.zeros(1, 4, 6)
    planted[0, :2, :2] = 1.0  # the clicked object ...
    planted[0, 2:, 4:] = 1.0  # ... and a look-alike apart from it

    def maps(vit, image, layer, targets, score):
        return RelevanceMaps(planted.clone(), targets, layer, (4, 6))

    monkeypatch.setattr(segments, "relevance_maps", maps)
    mask, _ = select(tiny_vit, torch.rand(3, 64, 96), (8.0, 8.0), layer=2, size=64, by="relevance")
    assert mask[:20, :20].all() and not mask[40:, 70:].any()


def test_a_small_object_is_not_swallowed_by_a_large_background():
    obj = torch.zeros(4, 6)
    obj[:2, :2] = 1
    background = (1 - obj) + 0.3 * obj  # the background tokens' maps leak onto the object
    maps = torch.stack([obj if obj.flatten()[t] else background for t in range(24)])
    result = RelevanceMaps(maps, torch.arange(24), 1, (4, 6))
    segments, _ = segments_from_maps(result, (4, 6), num_segments=2)
    assert segments[0, 0] != segments[3, 5]  # raw sums would give the 20-token cluster every pixel
    assert (segments == segments[0, 0]).sum() == 4


def test_region_under_keeps_only_the_connected_part_holding_the_point():
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1:3, 1:3] = True  # the clicked part
    mask[3, 3] = True  # touches it diagonally: 8-connected
    mask[4:6, 6:8] = True  # apart
    kept = region_under(mask, (1.5, 2.0))
    assert kept.sum() == 5 and kept[3, 3] and not kept[4:, 6:].any()
    assert not region_under(mask, (7.0, 0.0)).any()  # a point outside the mask selects nothing


def test_select_cluster_returns_the_clicked_pixels_cluster_kept_to_its_connected_part(tiny_checkpoint, monkeypatch):
    from ultra import load

    segmenter = load(tiny_checkpoint)
    planted = torch.zeros(3, 40, 60)
    planted[1] = 1.0  # cluster 1 everywhere ...
    planted[2, 5:15, 5:15] = 2.0  # ... except two separate blobs of cluster 2
    planted[2, 25:35, 40:55] = 2.0
    seen = {}

    def pixel_scores(images, size=None, flip=False, readouts=None):
        seen["size"], seen["readouts"] = size, readouts
        return {"head": planted[None]}

    monkeypatch.setattr(segmenter, "pixel_scores", pixel_scores)
    image = torch.rand(3, 40, 60)
    mask, clusters = select_cluster(segmenter, image, (8.0, 9.0), size=32)
    assert seen == {"size": (40, 60), "readouts": ["head"]} and clusters[30, 45] == 2
    assert mask.sum() == 100 and mask[5:15, 5:15].all()  # the clicked blob only, not the other one
    background, _ = select_cluster(segmenter, image, (30.0, 20.0), size=32)
    assert background.sum() == 40 * 60 - 100 - 150
    with pytest.raises(ConfigError, match="outside"):
        select_cluster(segmenter, image, (60.0, 5.0), size=32)
    with pytest.raises(ConfigError, match="no readout 'probe'"):
        select_cluster(segmenter, image, (8.0, 9.0), size=32, readout="probe")


def test_similarity_weighting_keeps_each_map_where_its_token_is_alike():
    tokens = torch.zeros(2, 3, 4)
    tokens[:, :2, 0] = 1.0  # the left two columns point one way ...
    tokens[:, 2:, 1] = 1.0  # ... the right column another
    flat = torch.full((6, 2, 3), 2.0)  # relevance alone says nothing
    weighted = similarity_weighted(RelevanceMaps(flat, torch.arange(6), 1, (2, 3)), tokens)
    left = torch.zeros(2, 3)
    left[:, :2] = 1
    assert torch.allclose(weighted.maps[0], left) and torch.allclose(weighted.maps[2], 1 - left)
    assert torch.equal(weighted.targets, torch.arange(6)) and weighted.grid == (2, 3)


def test_select_object_refuses_an_unknown_method_and_head_clusters_without_a_head(tiny_vit):
    picture = np.zeros((40, 60, 3), dtype=np.uint8)
    with pytest.raises(ConfigError, match=r"selection method must be one of \('similarity', 'clusters', 'relevance'\)"):
        select_object(picture, (5.0, 5.0), None, tiny_vit, method="cosine")
    with pytest.raises(ConfigError, match="no checkpoint, so no head clusters"):
        select_object(picture, (5.0, 5.0), None, tiny_vit, method="clusters")
    chosen = select_object(picture, (5.0, 5.0), None, tiny_vit, method="relevance", layer=2, size=32)
    assert chosen.mask.shape == (40, 60) and chosen.mask[5, 5] and chosen.map.shape == (40, 60, 3)


def test_cosine_maps_are_each_targets_cosine_to_every_token():
    tokens = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    maps = cosine_maps(tokens, torch.tensor([0, 7]))
    flat = tokens.reshape(12, 5)
    for row, target in enumerate((0, 7)):
        expected = torch.nn.functional.cosine_similarity(flat, flat[target][None], dim=-1).reshape(3, 4)
        assert torch.allclose(maps[row], expected, atol=1e-6)
    assert torch.allclose(maps[1].flatten()[7], torch.tensor(1.0))
    assert torch.allclose(similarity_maps(tokens, torch.tensor([0, 7])), maps.clamp_min(0) ** 2)


def test_the_similarity_map_reads_the_default_block_and_selection_thresholds_it(tiny_vit):
    assert default_block("similarity", 12) == 8 and default_block("relevance", 12) == 11
    assert default_block("similarity", 24) == 16 and default_block("similarity", 3) == 2
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(1))
    tokens = tiny_vit(image[None], layers=[1], kinds=["x"])["x", 1][0]
    values = click_map(tiny_vit, image, 4, layer=1, by="similarity")
    cosine = cosine_maps(tokens, torch.tensor([4]))[0]
    assert torch.allclose(values, cosine.clamp_min(0) ** 2, atol=1e-6) and (cosine < 0).any()
    with pytest.raises(ConfigError, match="by 'similarity' or 'relevance', got 'cosine'"):
        click_map(tiny_vit, image, 4, layer=1, by="cosine")
    mask, shown = select(tiny_vit, image, (40.0, 5.0), size=32)  # the tiny ViT's 3 blocks: default block 2
    assert torch.allclose(shown, click_map(tiny_vit, image, 2, layer=2, by="similarity"), atol=1e-6)
    assert mask[5, 40] and torch.equal(mask, region_under(mask, (40.0, 5.0)))
