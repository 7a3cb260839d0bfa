"""Cosine (spherical) k-means: k-means++ seeding, Lloyd or mini-batch updates, several restarts, best inertia.

``data`` is anything with ``len()`` and row indexing by a ``LongTensor`` that returns ``[b, D]``:
a tensor, or a lazy source that computes rows on demand (e.g. a head applied to cached tokens),
so a whole data set never has to be materialised. Rows are L2-normalised before use; inertia is
``sum(1 - max cosine)``. With ``all_reduce`` (e.g. ``torch.distributed.all_reduce``), per-cluster
sums and counts are summed across processes at every update, so every process holds the same
centroids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class RowSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: Tensor) -> Tensor: ...


@dataclass
class KMeansResult:
    centroids: Tensor  # [K, D], unit norm
    inertia: float     # sum over the evaluated rows of (1 - cosine to the nearest centroid)
    restart: int


def assign(x: Tensor, centroids: Tensor, chunk: int = 1 << 16) -> tuple[Tensor, Tensor]:
    """Nearest centroid (by cosine) of every row of ``x``, and that cosine."""
    labels, cosines = [], []
    for start in range(0, x.shape[0], chunk):
        sim = F.normalize(x[start:start + chunk].float(), dim=-1) @ centroids.T
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


def _update(centroids: Tensor, x: Tensor, counts: Tensor | None, all_reduce: Callable | None) -> tuple[Tensor, Tensor]:
    """One Lloyd (``counts=None``) or mini-batch (running ``counts``) update from the rows ``x``."""
    labels = (x @ centroids.T).argmax(1)
    k = centroids.shape[0]
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)
    n = torch.bincount(labels, minlength=k).to(x.dtype)
    if all_reduce is not None:
        all_reduce(sums)
        all_reduce(n)
    if counts is None:  # Lloyd: centroid = normalised mean; empty clusters keep their place
        new = torch.where(n[:, None] > 0, sums, centroids)
        return F.normalize(new, dim=-1), n
    counts = counts + n
    rate = torch.where(counts > 0, n / counts.clamp_min(1), torch.zeros_like(n))
    mean = sums / n.clamp_min(1)[:, None]
    new = centroids + rate[:, None] * (mean - centroids)
    return F.normalize(new, dim=-1), counts


def inertia(data: RowSource, centroids: Tensor, index: Tensor, chunk: int = 1 << 16) -> float:
    total = 0.0
    for start in range(0, index.numel(), chunk):
        total += float((1 - (_rows(data, index[start:start + chunk]) @ centroids.T).max(1).values).sum())
    return total


def kmeans(data: RowSource, k: int, *, restarts: int = 5, steps: int = 100, batch_size: int | None = None,
           seed: int = 0, eval_size: int = 1 << 18, all_reduce: Callable[[Tensor], None] | None = None) -> KMeansResult:
    """Spherical k-means of the rows of ``data``; the restart with the lowest inertia wins.

    ``batch_size=None`` (or at least ``len(data)``) runs Lloyd iterations on all rows until the
    assignment is stable (at most ``steps``); otherwise ``steps`` mini-batch updates of
    ``batch_size`` rows sampled uniformly. Inertia is measured on all rows, or on a fixed
    uniform sample of ``eval_size`` rows when there are more.
    """
    n = len(data)
    if k < 1 or n < k:
        raise ValueError(f"k-means needs 1 <= k <= number of rows, got k={k} with {n} rows")
    generator = torch.Generator().manual_seed(seed)
    full = batch_size is None or batch_size >= n
    all_rows = torch.arange(n)
    eval_index = all_rows if n <= eval_size else torch.randperm(n, generator=generator)[:eval_size].sort().values
    best: KMeansResult | None = None
    for restart in range(restarts):
        init_index = all_rows if full else torch.randperm(n, generator=generator)[: max(batch_size, 20 * k)]
        init_rows = _rows(data, init_index)
        centroids = _kmeans_pp(init_rows, k, generator)
        if full:
            previous = None
            for _ in range(steps):
                centroids, _ = _update(centroids, init_rows, None, all_reduce)
                labels = (init_rows @ centroids.T).argmax(1)
                if previous is not None and torch.equal(labels, previous):
                    break
                previous = labels
        else:
            counts = torch.zeros(k)
            for _ in range(steps):
                batch = _rows(data, torch.randint(n, (batch_size,), generator=generator))
                centroids, counts = _update(centroids, batch, counts, all_reduce)
        score = inertia(data, centroids, eval_index)
        if best is None or score < best.inertia:
            best = KMeansResult(centroids, score, restart)
    return best
