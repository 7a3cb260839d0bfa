"""k-means centroids of a trained head's outputs (and of raw tokens) over the cached training tokens."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from .kmeans import kmeans
from ..data.cache import FeatureCache, TokenKey

log = logging.getLogger(__name__)
KMEANS_SAMPLE = 1 << 16  # restarts run on this many rows, then one pass over all of them


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


def fit_centroids(rows: CachedRows, k: int, seed: int = 0, restarts: int = 3, sample_size: int = KMEANS_SAMPLE) -> Tensor:
    """Cosine k-means centroids ``[k, D]``: restarts on a sample of the rows, then one pass over all of them."""
    n = len(rows)
    result = kmeans(rows, k, restarts=restarts, sample_size=sample_size, seed=seed)
    log.info("k-means: %d clusters of %d rows, inertia %.1f (restart %d)", k, n, result.inertia, result.restart)
    return result.centroids
