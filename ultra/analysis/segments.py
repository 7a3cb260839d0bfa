"""Segments and objects from relevance maps: per-image segmentation and selection by a clicked point.

Segmentation: the maps of an image's tokens (each scaled to a maximum of 1) are clustered by
average-linkage agglomerative clustering on cosine distance (a distance threshold, or a fixed
number of segments); every pixel takes the cluster whose summed map is largest there (summed maps
scaled to a maximum of 1, then upsampled bilinearly). Without that scaling a large cluster's sum
outweighs a small one's everywhere: on synthetic scenes (the development set) per-image mIoU was
0.47 with raw sums and 0.82 with scaled ones; k-means instead of average linkage is an option.

Selection by a click (:data:`SELECT_METHODS`), each kept to the 8-connected part of its mask under the
click (an object is one connected region; on the label-generated clicks of ``bench/interpret.py`` this
raised IoU on every set measured): :func:`select`, a map of the clicked token upsampled to the image and
a threshold (Otsu's on the map's values, or a fraction of its maximum), the clicked token's own pixels
always in (its map's entry is the largest, but bilinear upsampling can lower the pixels near its
border below the threshold); the map is the (squared) cosine similarity of every token to the clicked
one at a middle block (the default: it beat the relevance maps and the last block's tokens on every
set measured) or the clicked token's relevance map; :func:`select_cluster`, the clicked pixel's cluster of a
trained head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from torch import Tensor

from ..backbone.image_size import check_resized_side, resize_to_patches
from ..backbone.vit import FrozenViT
from ..data.grids import upsample_scores
from ..data.transforms import image_to_tensor
from ..errors import ConfigError
from ..pictures import cluster_selection_pictures, heatmap, overlay, selection_pictures
from ..readout.kmeans import assign, kmeans
from ..readout.segmenter import Segmenter
from .masks import check_threshold, mask_from_map
from .points import check_point, point_token, region_under, token_pixels
from .relevance import RelevanceMaps, relevance_maps

CLUSTERINGS = ("average", "kmeans")


def cluster_maps(
    maps: Tensor,
    num_segments: int | None = None,
    distance_threshold: float | None = None,
    clustering: str = "average",
    seed: int = 0,
) -> Tensor:
    """Cluster ids ``[T]`` (0-based) of maps ``[T, ...]`` on cosine distance: average linkage (``num_segments`` or a
    ``distance_threshold``), or k-means (``num_segments``, k-means++ seeded by ``seed``)."""
    if (num_segments is None) == (distance_threshold is None):
        raise ConfigError("give exactly one of num_segments and distance_threshold")
    if clustering not in CLUSTERINGS:
        raise ConfigError(f"clustering must be one of {CLUSTERINGS}, got '{clustering}'")
    flat = maps.reshape(maps.shape[0], -1).double()
    if flat.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long)
    if clustering == "kmeans":
        if num_segments is None:
            raise ConfigError("k-means clustering of maps needs a number of segments, not a distance threshold")
        rows = flat.float()
        ids = assign(rows, kmeans(rows, min(num_segments, len(rows)), restarts=5, seed=seed).centroids)[0]
        return torch.from_numpy(np.unique(ids.numpy(), return_inverse=True)[1]).long()
    tree = linkage(flat.numpy(), method="average", metric="cosine")
    if num_segments is not None:
        ids = fcluster(tree, t=min(num_segments, flat.shape[0]), criterion="maxclust")
    else:
        ids = fcluster(tree, t=distance_threshold, criterion="distance")
    _, ids = np.unique(ids, return_inverse=True)
    return torch.from_numpy(ids).long()


def _unit_max(maps: Tensor) -> Tensor:
    """Each map of ``[T, h, w]`` divided by its maximum."""
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def cosine_maps(tokens: Tensor, targets: Tensor) -> Tensor:
    """``[T, h, w]``: the cosine similarity of every token of the grid ``tokens`` (``[h, w, D]``) to each target
    token (row-major indices)."""
    unit = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)
    return (unit[targets] @ unit.T).reshape(-1, *tokens.shape[:2])


def similarity_maps(tokens: Tensor, targets: Tensor) -> Tensor:
    """``[T, h, w]``: the squared cosine similarity of every token to each target (negative cosines as 0), the
    selection's map: squaring moves Otsu's cut up among the look-alikes (on the training images' clicks of camvid
    and cocostuff-dev, IoU 0.51 and 0.48 against 0.47 and 0.45 for the plain cosine, ``bench/interpret.py``)."""
    return cosine_maps(tokens, targets).clamp_min(0).square()


def similarity_weighted(result: RelevanceMaps, tokens: Tensor) -> RelevanceMaps:
    """Each target's relevance map (scaled to a maximum of 1) times the cosine similarity of its token to every
    token, clamped at 0 (``tokens``: ``[h, w, D]``, the maps' layer): a map that is both relevant and alike."""
    similarity = cosine_maps(tokens, result.targets).clamp_min(0)
    return replace(result, maps=_unit_max(result.maps) * similarity)


def segments_from_maps(
    result: RelevanceMaps,
    size: tuple[int, int],
    num_segments: int | None = None,
    distance_threshold: float | None = None,
    clustering: str = "average",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Per-pixel segment ids ``[H, W]`` and the clusters' summed maps ``[C, h, w]`` of one image's maps (clustered
    by :func:`cluster_maps`)."""
    maps = _unit_max(result.maps)
    ids = cluster_maps(maps, num_segments, distance_threshold, clustering, seed)
    summed = _unit_max(torch.zeros(int(ids.max()) + 1, *maps.shape[1:]).index_add_(0, ids, maps))
    scores = upsample_scores(summed[None], size)[0]
    return scores.argmax(0), summed


def prepare_image(vit: FrozenViT, image: Tensor, size: int) -> Tensor:
    """``image`` resized so its shorter side is about ``size``, both sides multiples of the patch (its longer side
    at most :data:`~ultra.backbone.image_size.MAX_SIDE`)."""
    height, width = image.shape[-2:]
    if min(height, width) < vit.patch_size:
        raise ConfigError(f"image of {width}x{height} px is smaller than one {vit.patch_size}x{vit.patch_size} patch")
    check_resized_side((height, width), size)
    return resize_to_patches(image[None], size, vit.patch_size)[0]


SELECT_METHODS = ("similarity", "clusters", "relevance")
"""The selections: the similarity of every token to the clicked one (:func:`select`, the default), a
trained head's clusters (:func:`select_cluster`), or the clicked token's relevance map (:func:`select`)."""


def default_block(method: str, num_layers: int) -> int:
    """The block whose tokens ``method`` reads by default: two thirds of the depth for ``"similarity"`` (block 8 of
    DINOv2-S/14's 12: the best of blocks 5-11 on the training images of camvid and cocostuff-dev,
    ``bench/interpret.py --split train``), the last for ``"relevance"`` (the maps run through every block)."""
    return round(num_layers * 2 / 3) if method == "similarity" else num_layers - 1


def click_map(vit: FrozenViT, image: Tensor, token: int, layer: int, by: str, score: str = "norm") -> Tensor:
    """The ``[h, w]`` map of patch ``token`` (row-major) of ``image`` (``[3, H, W]``, sides multiples of the patch)
    at block ``layer``: its :func:`similarity_maps` (``by="similarity"``) or its relevance map."""
    if by == "relevance":
        return relevance_maps(vit, image, layer=layer, targets=torch.tensor([token]), score=score).maps[0]
    if by != "similarity":
        raise ConfigError(f"a token's map is by 'similarity' or 'relevance', got {by!r}")
    layer = vit.check_layers([layer])[0]
    tokens = vit.token_grids(image[None], layers=[layer], kinds=["x"])["x", layer][0]
    return similarity_maps(tokens, torch.tensor([token]))[0].cpu()


def select(
    vit: FrozenViT,
    image: Tensor,
    point: tuple[float, float],
    layer: int | None = None,
    size: int = 448,
    threshold: str | float = "otsu",
    by: str = "similarity",
    score: str = "norm",
) -> tuple[Tensor, Tensor]:
    """The object under ``point`` (pixel x, y of ``image``, ``[3, H, W]`` in [0, 1]): the clicked token's map
    (:func:`click_map` at ``layer``, by default :func:`default_block`) thresholded, kept to its 8-connected part
    under the point (which also holds the clicked patch): a boolean ``[H, W]`` mask and the map."""
    height, width = image.shape[-2:]
    resized = prepare_image(vit, image, size)
    grid = vit.check_images(resized[None])
    token = point_token(point, (height, width), grid)
    values = click_map(vit, resized, token, default_block(by, vit.num_layers) if layer is None else layer, by, score)
    mask = mask_from_map(values, (height, width), threshold) | token_pixels(token, (height, width), grid)
    return region_under(mask, point), values


def head_clusters(segmenter: Segmenter, image: Tensor, size: int = 448, readout: str = "head") -> Tensor:
    """The cluster map ``[H, W]`` of ``readout`` on ``image`` (``[3, H, W]`` in [0, 1], fed at a shorter side of about
    ``size``): the argmax of its scores upsampled to the image."""
    segmenter.require_readout(readout)
    resized = prepare_image(segmenter.backbone, image, size)
    scores = segmenter.pixel_scores(resized[None], size=tuple(image.shape[-2:]), readouts=[readout])[readout][0]
    return scores.argmax(0).cpu()


def select_cluster(
    segmenter: Segmenter, image: Tensor, point: tuple[float, float], size: int = 448, readout: str = "head"
) -> tuple[Tensor, Tensor]:
    """The object under ``point`` from a trained head: the clicked pixel's cluster of ``readout``
    (:func:`head_clusters`), kept to its 8-connected part under the point. Returns the mask and the cluster map
    ``[H, W]``."""
    segmenter.require_readout(readout)
    check_point(point, tuple(image.shape[-2:]))
    clusters = head_clusters(segmenter, image, size, readout)
    x, y = (int(v) for v in point)
    return region_under(clusters == clusters[y, x], point), clusters


@dataclass
class Selection:
    """The boolean mask ``[H, W]`` of the object under the point, the mask over the photo (point marked) and what
    selected it as a picture (the head's clusters, or the clicked token's relevance map)."""

    mask: np.ndarray
    overlay: np.ndarray
    map: np.ndarray


def select_object(
    picture: np.ndarray,
    point: tuple[float, float],
    segmenter: Segmenter | None,
    vit: FrozenViT | None,
    method: str = SELECT_METHODS[0],
    layer: int | None = None,
    size: int = 448,
    threshold: str | float = "otsu",
) -> Selection:
    """The object under ``point`` (pixel x, y) of ``picture`` (``[H, W, 3]`` uint8) by one of :data:`SELECT_METHODS`,
    with its pictures: the ``segmenter``'s head clusters, or a map of block ``layer`` of ``vit`` (the segmenter's
    backbone when ``vit`` is None) thresholded at ``threshold``."""
    if method not in SELECT_METHODS:
        raise ConfigError(f"the selection method must be one of {SELECT_METHODS}, got {method!r}")
    image = image_to_tensor(picture)
    patch = (vit if vit is not None else segmenter.backbone).patch_size
    if size < 2 * patch:
        raise ConfigError(
            f"--size {size} gives a shorter side of at most one {patch} px patch: nothing to select from; "
            f"give at least {2 * patch}"
        )
    if method == "clusters":
        if segmenter is None:
            raise ConfigError("no checkpoint, so no head clusters: select by similarity or relevance")
        mask, clusters = select_cluster(segmenter, image, point, size=size)
        return Selection(mask.numpy(), *cluster_selection_pictures(picture, mask.numpy(), clusters.numpy(), point))
    vit = vit if vit is not None else segmenter.backbone
    mask, values = select(vit, image, point, layer=layer, size=size, threshold=check_threshold(threshold), by=method)
    return Selection(mask.numpy(), *selection_pictures(picture, mask.numpy(), values.numpy(), point))


def segment_by_relevance(
    vit: FrozenViT,
    image: Tensor,
    size: tuple[int, int],
    layer: int,
    stride: int = 2,
    maps: str = "product",
    num_segments: int | None = None,
    distance_threshold: float | None = 0.5,
    clustering: str = "average",
    what: str = "the image",
) -> tuple[Tensor, RelevanceMaps]:
    """Segments ``[H, W]`` of ``image`` (prepared, :func:`prepare_image`) at the picture ``size`` from the relevance
    maps of an anchor grid of tokens (every ``stride``-th), each times its token's similarity map (``maps="product"``)
    or alone (``"relevance"``), clustered as :func:`segments_from_maps` does; and the maps."""
    grid = vit.check_images(image[None])
    if stride > min(grid):
        raise ConfigError(f"--stride {stride} is larger than the {grid[0]}x{grid[1]} token grid of {what}")
    result = relevance_maps(vit, image, layer=layer, stride=stride)
    clustered = similarity_weighted(result, vit(image[None])["x", result.layer][0]) if maps == "product" else result
    segments, _ = segments_from_maps(clustered, size, num_segments, distance_threshold, clustering)
    return segments, result


def relevance_sheet(picture: np.ndarray, segments: Tensor, result: RelevanceMaps, shown: int = 4):
    """The panels and titles of an interpretation sheet: the picture, its segments and the maps of ``shown`` tokens
    spread over the anchors."""
    tokens = result.targets[torch.linspace(0, len(result.targets) - 1, shown).long()]
    panels = [picture, overlay(picture, segments.numpy())] + [
        heatmap(result.maps[int((result.targets == t).nonzero()[0, 0])].numpy(), picture.shape[1::-1]) for t in tokens
    ]
    titles = ["image", f"{int(segments.max()) + 1} segments"] + [
        f"map of token ({int(t) // result.grid[1]}, {int(t) % result.grid[1]})" for t in tokens
    ]
    return panels, titles
