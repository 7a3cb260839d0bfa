"""Training on one global graph: operators over all cached tokens, sampled in minibatches of nodes.

The graphs of the spectral loss are built once over every cached token of the training set
(blockwise, sparse; see :mod:`ultra.affinity`) and stored beside the cache. A training batch is
a uniform sample of nodes with the rows of every operator (graphs and the view-correspondence
operator) and the tokens of every node those rows touch, so the head sees exactly the columns
it needs. Batch ``i`` is a pure function of ``(seed, i)``; the sampler numbers batches
``epoch * steps + k`` and shares them between processes, so training is reproducible, resumable
at epoch boundaries, and distributed without two processes drawing the same batch.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from .affinity import GraphSpec, KnnConfig, knn_graph
from .features import FeatureCache, TokenKey
from .files import build_lock
from .graph import SparseGraph, SparseRows, index_dtype, indptr_from_counts
from .views import image_correspondences

log = logging.getLogger(__name__)
NODE_ORDERS = ("random", "sweep")


@dataclass
class TrainingOperators:
    """The graphs of the loss (with their weights) and the optional view-correspondence operator."""

    graphs: list[SparseGraph]
    weights: list[float]
    view: SparseRows | None


def build_view_operator(geometry: Tensor, views_per_image: int, grid: tuple[int, int],
                        chunk_images: int = 128) -> SparseRows:
    """Correspondences between the views of each image, over all cached nodes, ``chunk_images`` images at a time
    (each chunk's entries come in CSR order, its rows contiguous nodes: the operator is their concatenation)."""
    tokens = grid[0] * grid[1]
    num_nodes = geometry.shape[0] * tokens
    counts, indices, values = [], [], []
    for first in range(0, geometry.shape[0], chunk_images * views_per_image):
        chunk = geometry[first:first + chunk_images * views_per_image]
        r, c, v = image_correspondences(chunk.reshape(-1, views_per_image, 5), grid)
        counts.append(torch.bincount(r, minlength=chunk.shape[0] * tokens))
        indices.append((c + first * tokens).to(index_dtype(num_nodes)))
        values.append(v)
    return SparseRows(indptr_from_counts(torch.cat(counts)), torch.cat(indices), torch.cat(values))


def load_or_build_operators(cache: FeatureCache, specs: Sequence[GraphSpec], knn: KnnConfig,
                            view_consistency: bool, device: str | torch.device = "cpu") -> TrainingOperators:
    """The global operators of ``cache``, built once and stored in its ``graphs/`` folder (layers non-negative)."""
    folder = cache.path / "graphs"
    folder.mkdir(exist_ok=True)
    graphs = []
    for spec in specs:
        name = hashlib.sha256(json.dumps([spec.kind, spec.layer, asdict(knn)], sort_keys=True).encode()).hexdigest()[:16]
        path = folder / f"{spec.kind}{spec.layer}-{name}.safetensors"
        with build_lock(path, f"the {spec.name} graph"):
            graph = _load_checked(SparseGraph.load, path, cache.num_nodes)
            if graph is None:
                missing = [key for key in spec.token_keys if key not in cache.keys]
                if missing:
                    raise KeyError(f"graph {spec.name} needs the tokens {missing}, the cache holds {cache.keys}")
                log.info("building the %s graph of layer %d over %d tokens", spec.kind, spec.layer, cache.num_nodes)
                row_key, col_key = spec.token_keys
                columns = None if col_key == row_key else cache.tensor(col_key)
                knn_graph(cache.tensor(row_key), columns, knn, device=device, groups=cache.view_image()).save(path)
                graph = SparseGraph.load(path)
        graphs.append(graph)
    view = None
    if view_consistency:
        path = folder / "views.safetensors"
        with build_lock(path, "the view operator"):
            view = _load_checked(SparseRows.load, path, cache.num_nodes)
            if view is None:
                build_view_operator(cache.geometry, cache.views_per_image, cache.grid).save(path)
                view = SparseRows.load(path)
        if view.nnz == 0:
            log.warning("view consistency is on but no two views of an image overlap: the term is zero")
    return TrainingOperators(graphs, [s.weight for s in specs], view)


def _load_checked(load, path, num_nodes: int):
    """A stored operator, or None (to rebuild it) when it is missing, damaged or of another size."""
    if not path.is_file():
        return None
    try:
        operator = load(path)
        if operator.num_nodes != num_nodes or operator.indptr[-1] != operator.nnz:
            raise ValueError(f"{operator.num_nodes} nodes and {operator.nnz} entries, {num_nodes} nodes expected")
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        log.warning("stored operator %s is damaged (%s): rebuilding it", path, err)
        path.unlink()
        return None
    return operator


Entries = tuple[Tensor, Tensor, Tensor]


def batch_from_entries(features: Tensor, node_positions: Tensor, graphs: Sequence[Entries], columns: Tensor,
                       view: Entries | None) -> dict:
    """A training batch: tokens of the touched nodes (``columns``) and the rows of every operator as entries
    (position in the batch, global column, value), their columns renumbered as positions in ``columns``."""
    def local(entries: Entries) -> Entries:
        rows, cols, vals = entries
        return rows, torch.searchsorted(columns, cols), vals

    return {
        "features": features,
        "nodes": node_positions,
        "graphs": [local(e) for e in graphs],
        "view": local(view) if view is not None else None,
    }


def distinct_uniform(n: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` distinct integers drawn uniformly from ``[0, n)``, sorted, in O(count) time and memory whatever ``n``."""
    if count >= n:
        return torch.arange(n)
    if 4 * count > n:
        return torch.randperm(n, generator=generator)[:count].sort().values
    # draw with replacement, drop repeats, top up, then subsample: no permutation of all n
    drawn = torch.unique(torch.randint(n, (count + count // 4 + 16,), generator=generator))
    while drawn.numel() < count:
        drawn = torch.unique(torch.cat([drawn, torch.randint(n, (count,), generator=generator)]))
    keep = torch.randperm(drawn.numel(), generator=generator)[:count]
    return drawn[keep].sort().values


class NodeBatches(Dataset):
    """Batch ``i`` of node minibatches with their operator rows.

    ``order="random"``: ``steps_per_epoch`` batches of ``batch_nodes`` nodes drawn from ``(seed, i)``.
    ``order="sweep"``: consecutive blocks of ``batch_nodes`` nodes that cover every node once (one
    pass over the set, as the exact solver needs); ``steps_per_epoch`` and ``seed`` are unused, and
    batch numbers past the last block are empty batches (so every process gets as many as DDP needs).
    """

    def __init__(self, cache: FeatureCache, feature_keys: Sequence[TokenKey], operators: TrainingOperators,
                 batch_nodes: int, steps_per_epoch: int, seed: int = 0, order: str = "random"):
        if batch_nodes < 2 or steps_per_epoch < 1:
            raise ValueError(f"batch_nodes must be >= 2 and steps_per_epoch >= 1, got {batch_nodes}, {steps_per_epoch}")
        if order not in NODE_ORDERS:
            raise ValueError(f"node order must be one of {NODE_ORDERS}, got '{order}'")
        self.cache, self.keys, self.operators = cache, list(feature_keys), operators
        self.batch_nodes, self.seed, self.order = min(batch_nodes, cache.num_nodes), seed, order
        self.steps = -(-cache.num_nodes // self.batch_nodes) if order == "sweep" else steps_per_epoch

    def __len__(self) -> int:
        return self.steps

    def nodes(self, index: int) -> Tensor:
        n = self.cache.num_nodes
        if self.order == "sweep":
            return torch.arange(min(index * self.batch_nodes, n), min((index + 1) * self.batch_nodes, n))
        return distinct_uniform(n, self.batch_nodes, torch.Generator().manual_seed(self.seed * 1_000_003 + index))

    def __getitem__(self, index: int) -> dict:
        nodes = self.nodes(index)
        graphs = [g.entries(nodes) for g in self.operators.graphs]
        view = self.operators.view.entries(nodes) if self.operators.view is not None else None
        touched = [nodes] + [cols for _, cols, _ in graphs] + ([view[1]] if view is not None else [])
        columns = torch.unique(torch.cat(touched))
        features = self.cache.rows(self.keys, columns)
        return batch_from_entries(features, torch.searchsorted(columns, nodes), graphs, columns, view)


class NodeBatchSampler(DistributedSampler):
    """Numbers the batches of epoch ``e`` as ``e * total + k`` and gives each process every ``num_replicas``-th.

    Every process gets the same number of batches, ``ceil(steps / num_replicas)`` (``total`` is that
    times ``num_replicas``), as DDP needs; batch numbers stay distinct, so no two steps repeat a sample.
    """

    def __init__(self, batches: NodeBatches, num_replicas: int = 1, rank: int = 0):
        super().__init__(batches, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.per_process = -(-len(batches) // num_replicas)

    def __iter__(self) -> Iterator[int]:
        total = self.per_process * self.num_replicas
        return iter(self.epoch * total + self.rank + j * self.num_replicas for j in range(self.per_process))

    def __len__(self) -> int:
        return self.per_process
