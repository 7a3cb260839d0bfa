"""Test graphs with a known answer (planted partitions) and a subspace comparison."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ultra.graphs.sparse import SparseGraph


def subspace_cosines(a: Tensor, b: Tensor) -> Tensor:
    """Cosines of the principal angles between the column spaces of ``a`` and ``b`` (descending)."""
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)


def planted_partition(sizes: Sequence[int], p_in: float, p_out: float, seed: int = 0) -> tuple[SparseGraph, Tensor]:
    """A random graph with dense blocks (the planted clusters) and sparse links between them; returns the graph and labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    n = labels.numel()
    prob = torch.where(labels[:, None] == labels[None, :], p_in, p_out)
    upper = torch.triu(torch.rand(n, n, generator=generator) < prob, diagonal=1)
    r, c = upper.nonzero(as_tuple=True)
    return SparseGraph.from_affinity(r, c, torch.full((r.numel(),), 2.0), n), labels
