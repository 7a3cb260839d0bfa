"""Readouts fitted after the head: k-means centroids over the training tokens, and a supervised linear probe."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .cluster import kmeans
from .features import FeatureCache, TokenKey

log = logging.getLogger(__name__)
LLOYD_LIMIT = 1 << 17  # up to this many rows, Lloyd on all of them; above, mini-batch k-means


class CachedRows:
    """Rows of cached tokens (keys concatenated), optionally through a module (e.g. the head), computed on demand."""

    def __init__(self, cache: FeatureCache, keys: Sequence[TokenKey], module: nn.Module | None = None):
        self.cache, self.keys, self.module = cache, list(keys), module

    def __len__(self) -> int:
        return self.cache.num_nodes

    @torch.no_grad()
    def __getitem__(self, index: Tensor) -> Tensor:
        rows = self.cache.rows(self.keys, index)
        if self.module is None:
            return rows
        device = next(self.module.parameters()).device
        return self.module(rows.to(device)).cpu()


def fit_centroids(rows: CachedRows, k: int, seed: int = 0, restarts: int = 5) -> Tensor:
    """Cosine k-means centroids ``[k, D]`` of all rows (Lloyd) or of uniform mini-batches when there are many."""
    n = len(rows)
    if n <= LLOYD_LIMIT:
        result = kmeans(rows, k, restarts=restarts, steps=100, seed=seed)
    else:
        result = kmeans(rows, k, restarts=restarts, steps=500, batch_size=16384, seed=seed)
    log.info("k-means: %d clusters of %d rows, inertia %.1f (restart %d)", k, n, result.inertia, result.restart)
    return result.centroids


def train_probe(cache: FeatureCache, keys: Sequence[TokenKey], num_classes: int, steps: int = 1000,
                batch_size: int = 8192, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> nn.Linear | None:
    """A linear classifier of tokens into classes, trained on the cached label grids (None if there are no labels)."""
    labelled = torch.from_numpy(np.flatnonzero(cache.labels.reshape(-1) != 255))
    if labelled.numel() == 0:
        log.warning("no labelled tokens in the training cache: no linear probe")
        return None
    generator = torch.Generator().manual_seed(seed)
    probe = nn.Linear(cache.dim(keys), num_classes)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=generator)
        probe.bias.zero_()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="linear probe", disable=not progress):
        nodes = labelled[torch.randint(labelled.numel(), (min(batch_size, labelled.numel()),), generator=generator)]
        loss = F.cross_entropy(probe(cache.rows(keys, nodes)), cache.node_labels(nodes))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe
