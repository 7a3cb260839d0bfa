"""Minibatches of nodes drawn from the training graphs: what the head trains on.

A training batch is a uniform sample of nodes with the rows of every operator (graphs and the
view-correspondence operator) and the tokens of every node those rows touch, so the head sees
exactly the columns it needs. Batch ``i`` is a pure function of ``(seed, i)``; the sampler
numbers batches ``epoch * steps + k`` and shares them between processes, so training is
reproducible, resumable at epoch boundaries, and distributed without two processes drawing the
same batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from ..data.cache import FeatureCache, TokenKey
from ..errors import ConfigError
from ..graphs.store import TrainingGraphs

NODE_ORDERS = ("random", "sweep")


@dataclass(frozen=True)
class BatchConfig:
    """Node minibatches.

    Args:
        nodes: nodes per batch (the exact solver sweeps all nodes in batches of this size: memory only).
        steps_per_epoch: batches per epoch (random batches: the SGD solver).
    """

    nodes: int = 4096
    steps_per_epoch: int = 100


Entries = tuple[Tensor, Tensor, Tensor]


def batch_from_entries(
    features: Tensor, node_positions: Tensor, graphs: Sequence[Entries], columns: Tensor, view: Entries | None
) -> dict:
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
    """``count`` distinct integers drawn uniformly from ``[0, n)``, sorted, in O(count) time and memory whatever
    ``n``."""
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

    def __init__(
        self,
        cache: FeatureCache,
        feature_keys: Sequence[TokenKey],
        graphs: TrainingGraphs,
        batch_nodes: int,
        steps_per_epoch: int,
        seed: int = 0,
        order: str = "random",
    ):
        if batch_nodes < 2 or steps_per_epoch < 1:
            raise ConfigError(
                f"batch_nodes must be >= 2 and steps_per_epoch >= 1, got {batch_nodes}, {steps_per_epoch}"
            )
        if order not in NODE_ORDERS:
            raise ConfigError(f"node order must be one of {NODE_ORDERS}, got '{order}'")
        self.cache, self.keys, self.training_graphs = cache, list(feature_keys), graphs
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
        graphs = [g.entries(nodes) for g in self.training_graphs.graphs]
        view = self.training_graphs.view.entries(nodes) if self.training_graphs.view is not None else None
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
