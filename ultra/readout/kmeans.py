"""Cosine (spherical) k-means: k-means++ seeding and Lloyd iterations on a sample, several restarts, best inertia.

``data`` is anything with ``len()`` and row indexing by a ``LongTensor`` that returns ``[b, D]``:
a tensor, or a lazy source that computes rows on demand (e.g. a head applied to cached tokens),
so a whole data set never has to be materialised. Rows are L2-normalised before use; inertia is
``sum(1 - max cosine)``. With more rows than ``sample_size``, the restarts run on one uniform
sample held in memory (read once, shared by all restarts) and the winner gets one Lloyd pass over
every row: the cost is one random read of the sample and one sequential read of the set,
whatever the number of restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


class RowSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: Tensor) -> Tensor: ...


@dataclass
class KMeansResult:
    centroids: Tensor  # [K, D], unit norm
    inertia: float  # sum over the evaluated rows of (1 - cosine to the nearest centroid)
    restart: int


def assign(x: Tensor, centroids: Tensor, chunk: int = 1 << 16) -> tuple[Tensor, Tensor]:
    """Nearest centroid (by cosine) of every row of ``x``, and that cosine."""
    labels, cosines = [], []
    for start in range(0, x.shape[0], chunk):
        sim = F.normalize(x[start : start + chunk].float(), dim=-1) @ centroids.T
        c, lab = sim.max(1)
        labels.append(lab)
        cosines.append(c)
    return torch.cat(labels), torch.cat(cosines)


def _rows(data: RowSource, index: Tensor) -> Tensor:
    return F.normalize(data[index].float(), dim=-1)


def _kmeans_pp(sample: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on normalised rows with distance 1 - cosine."""
    first = torch.randint(sample.shape[0], (1,), generator=generator)
    centroids = [sample[first[0]]]
    dist = (1 - sample @ centroids[0]).clamp_min(0)
    for _ in range(1, k):
        prob = dist if dist.sum() > 0 else torch.ones_like(dist)
        pick = torch.multinomial(prob, 1, generator=generator)[0]
        centroids.append(sample[pick])
        dist = torch.minimum(dist, (1 - sample @ sample[pick]).clamp_min(0))
    return torch.stack(centroids)


def _lloyd_step(centroids: Tensor, x: Tensor, labels: Tensor) -> Tensor:
    """One Lloyd update from the rows ``x`` and their nearest ``centroids``' ``labels``: centroid = normalised mean;
    empty clusters keep their place."""
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=centroids.shape[0])
    return F.normalize(torch.where(counts[:, None] > 0, sums, centroids), dim=-1)


def _full_pass(data: RowSource, centroids: Tensor, chunk: int) -> tuple[Tensor, float]:
    """One Lloyd update over every row of ``data`` (read in chunks), and the inertia of ``centroids`` on them."""
    sums, counts, total = torch.zeros_like(centroids), torch.zeros(centroids.shape[0]), 0.0
    n = len(data)
    for start in range(0, n, chunk):
        x = _rows(data, torch.arange(start, min(start + chunk, n)))
        best, labels = (x @ centroids.T).max(1)
        sums.index_add_(0, labels, x)
        counts += torch.bincount(labels, minlength=centroids.shape[0])
        total += float((1 - best).sum())
    return F.normalize(torch.where(counts[:, None] > 0, sums, centroids), dim=-1), total


def inertia(x: Tensor, centroids: Tensor) -> float:
    """``sum(1 - max cosine)`` of normalised rows ``x``."""
    return float((1 - (x @ centroids.T).max(1).values).sum())


SAMPLE_SIZE = 1 << 16
"""Rows the restarts run on by default (then one pass over all of them)."""


def kmeans(
    data: RowSource,
    k: int,
    *,
    restarts: int = 3,
    steps: int = 100,
    sample_size: int | None = SAMPLE_SIZE,
    seed: int = 0,
    chunk: int = 1 << 16,
) -> KMeansResult:
    """Spherical k-means of the rows of ``data``; the restart with the lowest inertia (on the sample) wins.

    Each restart seeds with k-means++ and runs Lloyd iterations until the assignment is stable (at
    most ``steps``) on the sample: all rows when ``sample_size`` is None or at least ``len(data)``,
    otherwise ``sample_size`` rows drawn once. With a sample, the winner then gets one Lloyd pass
    over all rows, and the reported inertia is that of the winner over all rows.
    """
    n = len(data)
    if k < 1 or n < k:
        raise ConfigError(f"k-means needs 1 <= k <= number of rows, got k={k} with {n} rows")
    if restarts < 1:
        raise ConfigError(f"k-means needs restarts >= 1, got {restarts}")
    generator = torch.Generator().manual_seed(seed)
    sampled = sample_size is not None and sample_size < n
    if sampled and sample_size < k:
        raise ConfigError(f"k-means sample_size={sample_size} is smaller than k={k}")
    index = torch.randperm(n, generator=generator)[:sample_size].sort().values if sampled else torch.arange(n)
    sample = _rows(data, index)
    best: KMeansResult | None = None
    for restart in range(restarts):
        centroids = _kmeans_pp(sample, k, generator)
        labels = (sample @ centroids.T).argmax(1)
        for _ in range(steps):  # one product per step: the labels of the new centroids feed the next update
            centroids = _lloyd_step(centroids, sample, labels)
            updated = (sample @ centroids.T).argmax(1)
            if torch.equal(updated, labels):
                break
            labels = updated
        score = inertia(sample, centroids)
        if best is None or score < best.inertia:
            best = KMeansResult(centroids, score, restart)
    if sampled:
        centroids, score = _full_pass(data, best.centroids, chunk)
        best = KMeansResult(centroids, score, best.restart)
    return best
