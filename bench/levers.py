"""Levers of the head's quality that ``bench/ablation.py`` measures beyond the package's options.

None of them won on all four columns of the ablation (README › Head quality), so they live here and
not in ``ultra/``. Two families:

* graph levers: a new spectral form ``sum_l w_l X^T S_l X`` for the exact solve, from the default
  fit's forms and the training tokens (modularity, feature- and colour-weighted grid edges, shared-
  nearest-neighbour weights, a second graph built on the head's own embedding);
* readout levers: a readout of the head's embedding other than k-means with one centroid per
  class (over-clustering merged by average linkage, segments then clusters, self-training on
  segments). They read whole token grids ``[B, h, w, D] -> [B, h, w, C]``, since segments are per image.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ultra.data.cache import FeatureCache
from ultra.graphs.knn import KnnConfig, knn_graph
from ultra.graphs.sparse import SparseGraph
from ultra.head.exact import QuadraticForms
from ultra.readout.kmeans import kmeans
from ultra.readout.segmenter import ClusterReadout


@contextmanager
def captured_forms() -> Iterator[list[QuadraticForms]]:
    """Copies of the forms every exact solve inside the block solves (to solve them again with another graph)."""
    seen, original = [], QuadraticForms.solve

    def solve(self, *args, **kwargs):
        seen.append(copy.deepcopy(self))
        return original(self, *args, **kwargs)

    QuadraticForms.solve = solve
    try:
        yield seen
    finally:
        QuadraticForms.solve = original


@dataclass
class GraphLeverInput:
    """What a graph lever reads: the default fit's forms, its tokens ``[N, D]``, its graph, the cache and the head."""

    forms: QuadraticForms
    tokens: Tensor
    graph: SparseGraph
    cache: FeatureCache
    head_weight: Tensor
    colours: Callable[[], Tensor]


def _form(tokens: Tensor, propagated: Tensor) -> Tensor:
    """``X^T (S X)`` in float64."""
    return tokens.T.double() @ propagated.double()


def modularity(ctx: GraphLeverInput) -> Tensor:
    """The modularity matrix ``S - u u^T`` (``u = sqrt(d / vol)``): the rank-one correction CAUSE optimises."""
    u = (ctx.graph.degree / ctx.graph.degree.sum()).sqrt().double()
    xu = ctx.tokens.T.double() @ u
    return ctx.forms.spectral - torch.outer(xu, xu)


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


def grid_edges(ctx: GraphLeverInput, colour_scale: float | None, weight: float = 0.5, feature_scale: float = 0.1) -> Tensor:
    """The kNN graph plus (relative ``weight``) intra-view 8-neighbour edges weighted by ``exp((cos - 1) / feature_scale)``
    and, with ``colour_scale``, by ``exp(-|rgb_i - rgb_j|^2 / colour_scale^2)`` (the tokens' mean colours)."""
    rows, cols = grid_pairs(ctx.cache)
    weights = torch.exp((_cosines(ctx.tokens, rows, cols) - 1) / feature_scale)
    if colour_scale is not None:
        colours = ctx.colours()
        weights = weights * torch.exp(-((colours[rows] - colours[cols]) ** 2).sum(-1) / colour_scale ** 2)
    grid = SparseGraph.from_affinity(rows, cols, weights, ctx.tokens.shape[0])  # symmetrised, normalised
    return (ctx.forms.spectral + weight * _form(ctx.tokens, grid.matmul(ctx.tokens))) / (1 + weight)


def shared_neighbours(ctx: GraphLeverInput, chunk: int = 50_000) -> Tensor:
    """The kNN graph's edges reweighted by the neighbours the two tokens share (the SNN graph of single-cell pipelines)."""
    g, n = ctx.graph, ctx.tokens.shape[0]
    adjacency = scipy.sparse.csr_matrix((np.ones(g.nnz, np.float32), g.indices.numpy(), g.indptr.numpy()), shape=(n, n))
    shared = scipy.sparse.vstack([(adjacency[s:s + chunk] @ adjacency).multiply(adjacency[s:s + chunk])
                                  for s in range(0, n, chunk)]).tocoo()
    snn = SparseGraph.from_affinity(torch.from_numpy(shared.row).long(), torch.from_numpy(shared.col).long(),
                                    torch.from_numpy(shared.data).float(), n)
    return _form(ctx.tokens, snn.matmul(ctx.tokens))


def _edges(graph: SparseGraph) -> tuple[Tensor, Tensor, Tensor]:
    """Rows, columns and affinities ``A_ij = S_ij sqrt(d_i d_j)`` of a graph's entries."""
    rows = torch.repeat_interleave(torch.arange(graph.num_nodes), graph.indptr.diff())
    cols = graph.indices.long()
    return rows, cols, graph.values * (graph.degree[rows] * graph.degree[cols]).sqrt()


def _cosines(tokens: Tensor, rows: Tensor, cols: Tensor, chunk: int = 1 << 20) -> Tensor:
    return torch.cat([F.cosine_similarity(tokens[rows[s:s + chunk]], tokens[cols[s:s + chunk]], dim=-1)
                      for s in range(0, len(rows), chunk)])


def mutual_neighbours(ctx: GraphLeverInput) -> Tensor:
    """The kNN graph's mutual edges only (each token among the other's neighbours). The stored graph is
    ``(W + W^T) / 2`` of cosines, so an edge found both ways carries its full cosine and a one-way edge half of it."""
    rows, cols, affinity = _edges(ctx.graph)
    mutual = affinity > 0.75 * _cosines(ctx.tokens, rows, cols)
    graph = SparseGraph.from_affinity(rows[mutual], cols[mutual], affinity[mutual], ctx.tokens.shape[0])
    return _form(ctx.tokens, graph.matmul(ctx.tokens))


def repulsion(ctx: GraphLeverInput, pairs_per_token: int = 8, weight: float = 1.0, seed: int = 0) -> Tensor:
    """The kNN graph plus STEGO's negative term: random pairs of tokens from different views, weighted by
    ``min(cos - shift, 0)`` with the shift the pairs' mean cosine (dissimilar pairs pushed apart), normalised by the
    kNN graph's degrees and added with relative ``weight``."""
    n, per_view = ctx.tokens.shape[0], ctx.cache.tokens_per_view
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(n).repeat_interleave(pairs_per_token)
    cols = torch.randint(0, n, (rows.numel(),), generator=generator)
    rows, cols = rows[cols // per_view != rows // per_view], cols[cols // per_view != rows // per_view]
    cosine = _cosines(ctx.tokens, rows, cols)
    signed = (cosine - cosine.mean()).clamp_max(0)
    inv = ctx.graph.degree.clamp_min(1e-12).rsqrt()
    values = torch.cat([signed, signed]) * 0.5 * inv[torch.cat([rows, cols])] * inv[torch.cat([cols, rows])]
    operator = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]), values, (n, n)).coalesce()
    return ctx.forms.spectral + weight * _form(ctx.tokens, torch.sparse.mm(operator, ctx.tokens))


def second_graph(ctx: GraphLeverInput) -> Tensor:
    """The trained graph's kNN search run again on the head's own embedding (a second exact solve on a second graph)."""
    embedding = (ctx.tokens @ ctx.head_weight.T).reshape(ctx.cache.num_views, ctx.cache.tokens_per_view, -1)
    graph = knn_graph(embedding, None, KnnConfig(), groups=ctx.cache.view_image())
    return _form(ctx.tokens, graph.matmul(ctx.tokens))


GRAPH_LEVERS = {
    "modularity": modularity,
    "grid_feature_edges": lambda ctx: grid_edges(ctx, None),
    "grid_feature_colour_edges": lambda ctx: grid_edges(ctx, 0.2),
    "shared_neighbours": shared_neighbours,
    "mutual_neighbours": mutual_neighbours,
    "repulsion": repulsion,
    "second_graph": second_graph,
}


def view_colours(dataset, transform, grid: tuple[int, int]) -> Tensor:
    """The mean colour ``[N, 3]`` (in [0, 1]) of every cached token: each view's pixels averaged over its patches."""
    loader = DataLoader(dataset.with_transform(transform), batch_size=8, collate_fn=lambda items: items)
    colours = [F.adaptive_avg_pool2d(item["image"].float(), grid).permute(0, 2, 3, 1).reshape(-1, 3)
               for items in loader for item in items]
    return torch.cat(colours)


# --- readout levers ---------------------------------------------------------------------------

def superpixels(z: Tensor, segments: int = 16, position_weight: float = 1.0, iterations: int = 10) -> Tensor:
    """Per-image k-means of ``[unit z, position_weight * (y, x)]`` from a regular grid of seeds: ``[B, h, w, m] -> [B, h, w]``."""
    b, h, w, m = z.shape
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    points = torch.cat([F.normalize(z.reshape(b, h * w, m), dim=-1),
                        position_weight * torch.stack([y, x], -1).reshape(1, h * w, 2).expand(b, -1, -1)], -1)
    side = round(segments ** 0.5)
    sy = torch.linspace(0, h - 1, side + 2)[1:-1].round().long()
    sx = torch.linspace(0, w - 1, side + 2)[1:-1].round().long()
    centres = points[:, (sy[:, None] * w + sx[None, :]).flatten()]
    for _ in range(iterations):
        members = F.one_hot(torch.cdist(points, centres).argmin(-1), centres.shape[1]).float()
        counts = members.sum(1)
        centres = torch.where(counts[..., None] > 0, members.transpose(1, 2) @ points / counts.clamp_min(1)[..., None], centres)
    return torch.cdist(points, centres).argmin(-1).reshape(b, h, w)


def segment_means(z: Tensor, segments: Tensor) -> tuple[Tensor, Tensor]:
    """Mean unit embedding ``[B, S, m]`` and size ``[B, S]`` of each segment."""
    b, h, w, m = z.shape
    members = F.one_hot(segments.reshape(b, -1), int(segments.max()) + 1).float()
    counts = members.sum(1)
    return members.transpose(1, 2) @ F.normalize(z.reshape(b, -1, m), dim=-1) / counts.clamp_min(1)[..., None], counts


class GroupedReadout(nn.Module):
    """Cosine of the head's embedding to over-clustered centroids; a group's score is its best centroid's."""

    def __init__(self, head: nn.Module, centroids: Tensor, groups: Tensor):
        super().__init__()
        self.head, self.centroids, self.groups = head, F.normalize(centroids, dim=-1), groups
        self.num_outputs = int(groups.max()) + 1

    def forward(self, grids: Tensor) -> Tensor:
        scores = F.normalize(self.head(grids), dim=-1) @ self.centroids.T
        out = torch.full((*scores.shape[:-1], self.num_outputs), -float("inf"))
        return out.scatter_reduce(-1, self.groups.expand_as(scores), scores, reduce="amax")


@dataclass
class ReadoutLeverInput:
    """What a readout lever reads: the head, its embedding ``[N, m]`` of every cached token, the views' grid shape
    ``(views, h, w)``, the number of classes and the training graph."""

    head: nn.Module
    embedding: Tensor
    grid_shape: tuple[int, int, int]
    classes: int
    graph: SparseGraph


def _overclustered(ctx: ReadoutLeverInput, factor: int, seed: int) -> Tensor:
    return F.normalize(kmeans(ctx.embedding, factor * ctx.classes, restarts=3, sample_size=1 << 16, seed=seed).centroids, dim=-1)


def overcluster_average_linkage(ctx: ReadoutLeverInput, seed: int, factor: int = 3) -> nn.Module:
    """k-means with ``factor`` x the classes, the centroids merged to the classes by average-linkage (cosine) clustering."""
    centroids = _overclustered(ctx, factor, seed)
    tree = linkage(centroids.double().numpy(), method="average", metric="cosine")
    groups = torch.from_numpy(fcluster(tree, ctx.classes, criterion="maxclust") - 1).long()
    return GroupedReadout(ctx.head, centroids, groups)


@torch.no_grad()
def overcluster_spectral_merge(ctx: ReadoutLeverInput, seed: int, factor: int) -> nn.Module:
    """k-means with ``factor`` x the classes, merged to the classes by spectral clustering (normalised affinity, top
    eigenvectors, cosine k-means) of the graph between clusters: ``A[a, b]`` = the training graph's edge weights
    summed from tokens of cluster a to tokens of b."""
    centroids = _overclustered(ctx, factor, seed)
    k, g = centroids.shape[0], ctx.graph
    labels = (F.normalize(ctx.embedding, dim=-1) @ centroids.T).argmax(1)
    sources = torch.repeat_interleave(torch.arange(g.num_nodes), g.indptr.diff())
    pair = labels[sources] * k + labels[g.indices.long()]
    affinity = torch.bincount(pair, weights=g.values.double(), minlength=k * k).view(k, k)
    affinity = (affinity + affinity.T) / 2
    inv = affinity.sum(1).clamp_min(1e-12).rsqrt()
    vectors = torch.linalg.eigh(inv[:, None] * affinity * inv[None, :])[1][:, -ctx.classes:].float()
    grouping = kmeans(vectors, ctx.classes, restarts=10, sample_size=None, seed=seed).centroids
    groups = (F.normalize(vectors, dim=-1) @ F.normalize(grouping, dim=-1).T).argmax(1)
    return GroupedReadout(ctx.head, centroids, groups)


class SegmentReadout(nn.Module):
    """Each image cut into segments of the head's embedding; a token scores as its segment's mean against the centroids."""

    def __init__(self, head: nn.Module, centroids: Tensor, segments: int):
        super().__init__()
        self.head, self.centroids, self.segments = head, F.normalize(centroids, dim=-1), segments
        self.num_outputs = centroids.shape[0]

    def forward(self, grids: Tensor) -> Tensor:
        z = self.head(grids)
        labels = superpixels(z, self.segments)
        means, _ = segment_means(z, labels)
        scores = F.normalize(means, dim=-1) @ self.centroids.T
        flat = labels.reshape(labels.shape[0], -1, 1).expand(-1, -1, self.num_outputs)
        return torch.gather(scores, 1, flat).reshape(*labels.shape, -1)


def segments_then_clusters(ctx: ReadoutLeverInput, seed: int, segments: int = 16) -> nn.Module:
    """Deep-spectral-methods style: per-view segments of the embedding, k-means of the segment means over the set."""
    views = ctx.embedding.reshape(*ctx.grid_shape, -1)
    means, counts = segment_means(views, superpixels(views, segments))
    means = means.reshape(-1, means.shape[-1])[counts.flatten() > 0]
    return SegmentReadout(ctx.head, kmeans(means, ctx.classes, restarts=3, sample_size=None, seed=seed).centroids, segments)


def self_training(ctx: ReadoutLeverInput, seed: int, rounds: int = 2, segments: int = 16) -> nn.Module:
    """PriMaPs-EM style: k-means, then each per-view segment relabelled by the majority of its tokens' clusters and
    the centroids refitted as the mean of their pseudo-labelled tokens, ``rounds`` times."""
    views, classes = ctx.embedding.reshape(*ctx.grid_shape, -1), ctx.classes
    labels = superpixels(views, segments).reshape(ctx.grid_shape[0], -1)
    segment = (labels + torch.arange(ctx.grid_shape[0])[:, None] * segments).flatten()
    unit = F.normalize(ctx.embedding, dim=-1)
    centroids = _overclustered(ctx, 1, seed)
    for _ in range(rounds):
        votes = torch.zeros(ctx.grid_shape[0] * segments, classes).index_add_(0, segment, F.one_hot((unit @ centroids.T).argmax(1), classes).float())
        pseudo = votes.argmax(1)[segment]
        centroids = F.normalize(torch.zeros(classes, unit.shape[1]).index_add_(0, pseudo, unit), dim=-1)
    return ClusterReadout([], centroids, ctx.head)


READOUT_LEVERS = {
    "overcluster4_merge": lambda ctx, seed: overcluster_spectral_merge(ctx, seed, 4),
    "overcluster8_merge": lambda ctx, seed: overcluster_spectral_merge(ctx, seed, 8),
    "overcluster3_average_linkage": overcluster_average_linkage,
    "segments_then_clusters": segments_then_clusters,
    "self_training_segments": self_training,
}
