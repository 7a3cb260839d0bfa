"""Levers of the head's quality that ``bench/ablation.py`` measures beyond the package's options.

None of them won on all four columns of the ablation (README › Head quality), so they live here and
not in ``ultra/``. The round-2 levers that tied or lost (modularity, colour-weighted grid edges, shared and
mutual neighbours, repulsion, both spectral merges of over-clustering, its average-linkage merge, segments
then clusters) were removed; their rows stay in the README with the commit that removed them. Two families:

* graph levers: a new spectral form ``sum_l w_l X^T S_l X`` for the exact solve, from the default
  fit's forms and the training tokens (feature-weighted grid edges, a second graph built on the head's
  own embedding);
* readout levers: a readout of the head's embedding other than k-means with one centroid per
  class (self-training on segments; the embedding's columns weighted by their spectral quotients). They read
  whole token grids ``[B, h, w, D] -> [B, h, w, C]``, since segments are per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ultra.data.cache import FeatureCache
from ultra.graphs.knn import KnnConfig, knn_graph
from ultra.graphs.sparse import SparseGraph
from ultra.head.exact import QuadraticForms
from ultra.head.projection import ProjectionHead
from ultra.readout.fit import CachedRows, fit_centroids
from ultra.readout.kmeans import kmeans
from ultra.readout.segmenter import ClusterReadout


@dataclass
class GraphLeverInput:
    """What a graph lever reads: the default fit's forms, its tokens ``[N, D]``, the cache and the head's matrix."""

    forms: QuadraticForms
    tokens: Tensor
    cache: FeatureCache
    head_weight: Tensor


def _form(tokens: Tensor, propagated: Tensor) -> Tensor:
    """``X^T (S X)`` in float64."""
    return tokens.T.double() @ propagated.double()


def grid_pairs(cache: FeatureCache, radius: int = 1) -> tuple[Tensor, Tensor]:
    """Every pair of tokens of one view at most ``radius`` grid steps apart (8 neighbours for radius 1), once."""
    h, w = cache.grid
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    src, dst = [], []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy, dx) <= (0, 0):
                continue
            ok = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
            src.append((y * w + x)[ok])
            dst.append(((y + dy) * w + x + dx)[ok])
    offsets = (torch.arange(cache.num_views) * h * w)[:, None]
    return (torch.cat(src)[None] + offsets).flatten(), (torch.cat(dst)[None] + offsets).flatten()


def _cosines(tokens: Tensor, rows: Tensor, cols: Tensor, chunk: int = 1 << 20) -> Tensor:
    return torch.cat(
        [
            F.cosine_similarity(tokens[rows[s : s + chunk]], tokens[cols[s : s + chunk]], dim=-1)
            for s in range(0, len(rows), chunk)
        ]
    )


def grid_edges(ctx: GraphLeverInput, weight: float = 0.5, feature_scale: float = 0.1) -> Tensor:
    """The kNN graph plus (relative ``weight``) intra-view 8-neighbour edges weighted by ``exp((cos - 1) /
    feature_scale)``."""
    rows, cols = grid_pairs(ctx.cache)
    weights = torch.exp((_cosines(ctx.tokens, rows, cols) - 1) / feature_scale)
    grid = SparseGraph.from_affinity(rows, cols, weights, ctx.tokens.shape[0])  # symmetrised, normalised
    return (ctx.forms.spectral + weight * _form(ctx.tokens, grid.matmul(ctx.tokens))) / (1 + weight)


def second_graph(ctx: GraphLeverInput) -> Tensor:
    """The trained graph's kNN search run again on the head's own embedding (a second exact solve on a second graph)."""
    embedding = (ctx.tokens @ ctx.head_weight.T).reshape(ctx.cache.num_views, ctx.cache.tokens_per_view, -1)
    graph = knn_graph(embedding, None, KnnConfig(), groups=ctx.cache.view_image())
    return _form(ctx.tokens, graph.matmul(ctx.tokens))


GRAPH_LEVERS = {
    "grid_feature_edges": grid_edges,
    "second_graph": second_graph,
}


# --- readout levers ---------------------------------------------------------------------------


def superpixels(z: Tensor, segments: int = 16, position_weight: float = 1.0, iterations: int = 10) -> Tensor:
    """Per-image k-means of ``[unit z, position_weight * (y, x)]`` from a regular grid of seeds: ``[B, h, w, m] ->
    [B, h, w]``."""
    b, h, w, m = z.shape
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    points = torch.cat(
        [
            F.normalize(z.reshape(b, h * w, m), dim=-1),
            position_weight * torch.stack([y, x], -1).reshape(1, h * w, 2).expand(b, -1, -1),
        ],
        -1,
    )
    side = round(segments**0.5)
    sy = torch.linspace(0, h - 1, side + 2)[1:-1].round().long()
    sx = torch.linspace(0, w - 1, side + 2)[1:-1].round().long()
    centres = points[:, (sy[:, None] * w + sx[None, :]).flatten()]
    for _ in range(iterations):
        members = F.one_hot(torch.cdist(points, centres).argmin(-1), centres.shape[1]).float()
        counts = members.sum(1)
        centres = torch.where(
            counts[..., None] > 0, members.transpose(1, 2) @ points / counts.clamp_min(1)[..., None], centres
        )
    return torch.cdist(points, centres).argmin(-1).reshape(b, h, w)


@dataclass
class ReadoutLeverInput:
    """What a readout lever reads: the head, its embedding ``[N, m]`` of every cached token, the views' grid shape
    ``(views, h, w)``, the number of classes, the token keys the head reads, the cache and the spectral quotient of
    each of the head's output columns."""

    head: nn.Module
    embedding: Tensor
    grid_shape: tuple[int, int, int]
    classes: int
    keys: list
    cache: FeatureCache
    quotients: Tensor


def self_training(ctx: ReadoutLeverInput, seed: int, rounds: int = 2, segments: int = 16) -> nn.Module:
    """PriMaPs-EM style: k-means, then each per-view segment relabelled by the majority of its tokens' clusters and
    the centroids refitted as the mean of their pseudo-labelled tokens, ``rounds`` times."""
    views, classes = ctx.embedding.reshape(*ctx.grid_shape, -1), ctx.classes
    labels = superpixels(views, segments).reshape(ctx.grid_shape[0], -1)
    segment = (labels + torch.arange(ctx.grid_shape[0])[:, None] * segments).flatten()
    unit = F.normalize(ctx.embedding, dim=-1)
    centroids = F.normalize(
        kmeans(ctx.embedding, classes, restarts=3, sample_size=1 << 16, seed=seed).centroids, dim=-1
    )
    for _ in range(rounds):
        clusters = F.one_hot((unit @ centroids.T).argmax(1), classes).float()
        votes = torch.zeros(ctx.grid_shape[0] * segments, classes).index_add_(0, segment, clusters)
        pseudo = votes.argmax(1)[segment]
        centroids = F.normalize(torch.zeros(classes, unit.shape[1]).index_add_(0, pseudo, unit), dim=-1)
    return ClusterReadout(ctx.keys, centroids, ctx.head)


def quotient_weighted(ctx: ReadoutLeverInput, seed: int, power: float) -> nn.Module:
    """Diffusion-map style: each output column scaled by its spectral quotient to ``power`` (the coarse directions,
    whose quotients are near 1, weigh more than the fine ones), then the default readout's cosine k-means."""
    head = ProjectionHead(ctx.head.in_dim, ctx.head.out_dim).eval()
    head.net.weight.data.copy_(ctx.head.net.weight * ctx.quotients.clamp_min(0).float().pow(power)[:, None])
    return ClusterReadout(ctx.keys, fit_centroids(CachedRows(ctx.cache, ctx.keys, head), ctx.classes, seed), head)


READOUT_LEVERS = {
    "self_training_segments": self_training,
    **{f"quotient_weighted{power}": partial(quotient_weighted, power=power) for power in (4, 8, 16, 32, 64)},
}
