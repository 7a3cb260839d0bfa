"""Layer-distributed spectral clustering by gradient descent: a free table of pseudo-eigenvectors.

:func:`solve` minimises :func:`~ultra.graphs.spectral.spectral_loss` over a table ``X`` (one row
per node) for one image or a whole set (minibatches of images); :func:`exact_eigenvectors` is the
dense reference it is tested against, and :func:`image_eigenvectors` solves each image of a set alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..graphs.sparse import SparseGraph
from ..graphs.spectral import normalized_weights, rayleigh_ritz, spectral_loss


@dataclass
class SolverConfig:
    """Free-table solver settings. ``batch_images=None`` solves on all nodes at once (one image, a small set)."""

    num_vectors: int = 16
    epochs: int = 300
    lr: float = 0.02
    ortho_weight: float = 1.0
    ema: float = 0.9
    batch_images: int | None = None
    seed: int = 0


@dataclass
class SpectralResult:
    vectors: Tensor  # [N, m], orthonormal, ordered by Ritz value
    values: Tensor  # [m] Ritz values of the weighted operator
    history: list[float] = field(default_factory=list)  # loss per epoch

    @property
    def objective(self) -> float:
        """Sum of the Ritz values: what the spectral term maximises (the optimum is the sum of the top-m
        eigenvalues)."""
        return float(self.values.sum())


def solve(
    graphs: Sequence[SparseGraph],
    weights: Sequence[float] | None = None,
    config: SolverConfig = SolverConfig(),
    nodes_per_image: int | None = None,
    progress: bool = False,
) -> SpectralResult:
    """Pseudo-eigenvectors of ``graphs`` (all over the same N nodes) by gradient descent on a free table.

    With ``config.batch_images``, nodes are grouped in images of ``nodes_per_image`` tokens; each
    step updates the table rows of a minibatch of images and of their neighbours (sparse Adam),
    so all images' vectors live in one table and share their meaning. The output is the
    exponential moving average of the table, re-orthogonalised and ordered (Rayleigh-Ritz).
    """
    if not graphs:
        raise ValueError("no graphs to solve")
    n = graphs[0].num_nodes
    if any(g.num_nodes != n for g in graphs):
        raise ValueError(f"graphs must share their nodes, got sizes {[g.num_nodes for g in graphs]}")
    m = config.num_vectors
    if not 1 <= m < n:
        raise ConfigError(f"num_vectors={m} must be in [1, N) with N={n} nodes")
    weights = normalized_weights(weights, len(graphs))
    batches = None if config.batch_images is None else ImageBatches(n, nodes_per_image, config.batch_images)
    generator = torch.Generator().manual_seed(config.seed)
    table = nn.Embedding(n, m, sparse=True)
    with torch.no_grad():
        table.weight.copy_(torch.randn(n, m, generator=generator))
    average = table.weight.detach().clone()
    optimizer = torch.optim.SparseAdam(table.parameters(), lr=config.lr)
    full = [g.rows(torch.arange(n)) for g in graphs] if batches is None else None
    history = []
    for _ in tqdm(range(config.epochs), desc="spectral solve", disable=not progress):
        epoch_loss = 0.0
        plan = [torch.arange(n)] if batches is None else batches.epoch(generator)
        for nodes in plan:
            rows = full or [g.rows(nodes) for g in graphs]
            touched = torch.unique(torch.cat([nodes] + [r.neighbors for r in rows]))
            x = table(touched)
            x_nodes = x[torch.searchsorted(touched, nodes)]
            propagated = [r.propagate(x[torch.searchsorted(touched, r.neighbors)], x_nodes) for r in rows]
            loss = spectral_loss(x_nodes, propagated, weights, config.ortho_weight)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
            with torch.no_grad():
                average[touched] = config.ema * average[touched] + (1 - config.ema) * table.weight[touched]
            epoch_loss += loss.total.item() / len(plan)
        history.append(epoch_loss)
    vectors, values = rayleigh_ritz(graphs, weights, average)
    return SpectralResult(vectors, values, history)


class ImageBatches:
    """Minibatches of whole images (``nodes_per_image`` consecutive nodes each), reshuffled every epoch."""

    def __init__(self, num_nodes: int, nodes_per_image: int | None, batch_images: int):
        if not nodes_per_image or num_nodes % nodes_per_image:
            raise ConfigError(f"batch_images needs nodes_per_image dividing N={num_nodes}, got {nodes_per_image}")
        if batch_images < 1:
            raise ConfigError(f"batch_images must be >= 1, got {batch_images}")
        self.images = num_nodes // nodes_per_image
        self.nodes_per_image, self.batch_images = nodes_per_image, batch_images

    def epoch(self, generator: torch.Generator) -> list[Tensor]:
        order = torch.randperm(self.images, generator=generator)
        offsets = torch.arange(self.nodes_per_image)
        return [
            (order[s : s + self.batch_images, None] * self.nodes_per_image + offsets).flatten().sort().values
            for s in range(0, self.images, self.batch_images)
        ]


def exact_eigenvectors(graphs: Sequence[SparseGraph], weights: Sequence[float] | None, m: int) -> tuple[Tensor, Tensor]:
    """Reference: the top-``m`` eigenpairs of the dense weighted operator (``torch.linalg.eigh``; small graphs only)."""
    dense = sum(w * g.to_dense().double() for w, g in zip(normalized_weights(weights, len(graphs)), graphs))
    return _top_eigenpairs(dense, m)


def image_eigenvectors(graph: SparseGraph, nodes_per_image: int, m: int) -> Tensor:
    """``[images, nodes_per_image, m]``: the exact top-``m`` eigenvectors of each image's own block of ``graph``, whose
    nodes are the images' tokens in order (a graph without edges between images, as ``k_inter=0`` builds it: its
    eigenvectors are the blocks'). Each block is solved densely, so a set of any size costs one small solve per
    image."""
    if graph.teleport or graph.num_nodes % nodes_per_image:
        raise ValueError(
            f"image_eigenvectors needs a graph without teleport whose {graph.num_nodes} nodes are whole images "
            f"of {nodes_per_image}"
        )
    blocks = []
    for start in range(0, graph.num_nodes, nodes_per_image):
        nodes = torch.arange(start, start + nodes_per_image)
        rows, cols, values = graph.entries(nodes)  # rows: positions in nodes
        inside = (cols >= start) & (cols < start + nodes_per_image)
        dense = torch.zeros(nodes_per_image, nodes_per_image, dtype=torch.float64)
        dense[rows[inside], cols[inside] - start] = values[inside].double()
        blocks.append(_top_eigenpairs(dense, m)[0])
    return torch.stack(blocks)


def _top_eigenpairs(dense: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The top-``m`` eigenvectors (columns) and eigenvalues of the symmetrised ``dense``, largest first."""
    values, vectors = torch.linalg.eigh((dense + dense.T) / 2)
    return vectors[:, -m:].flip(1).float(), values[-m:].flip(0).float()
