"""The spectral criterion on normalised graphs: the loss of the head and of the free-table solver.

The loss (DESIGN.md section 3), for pseudo-eigenvectors ``X`` (``N x m``) with columns normalised
over the nodes, graphs ``S_l`` (:class:`~ultra.graphs.sparse.SparseGraph`) and weights ``w_l`` (summing to 1)::

    L = sum_l w_l * mean_c |1 - x_c^T S_l x_c|  +  lambda * mean_{c != c'} (x_c^T x_c')^2

Its optimum is the top-m eigenspace of ``sum_l w_l S_l`` (Ky Fan). :func:`spectral_loss` computes
it on a batch of node rows (all nodes: the exact loss; a sample: a stochastic estimate), so the
same function serves a free table (:func:`ultra.analysis.solver.solve`) and a head's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .sparse import SparseGraph


class SpectralLoss(NamedTuple):
    total: Tensor
    spectral: Tensor
    ortho: Tensor
    quotients: Tensor  # [graphs, m]


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(weights) != count or any(w <= 0 for w in weights):
        raise ConfigError(f"need {count} positive graph weights, got {weights}")
    return [w / sum(weights) for w in weights]


def spectral_loss(
    x_nodes: Tensor,
    propagated: Sequence[Tensor],
    weights: Sequence[float] | None = None,
    ortho_weight: float = 1.0,
    eps: float = 1e-12,
) -> SpectralLoss:
    """The spectral-consistency loss on a batch of node rows.

    ``x_nodes``: ``[b, m]`` embeddings of the batch's nodes; ``propagated[l]``: ``[b, m]`` rows of
    ``S_l @ X`` for the same nodes. Column norms are taken over the batch's rows.
    """
    weights = normalized_weights(weights, len(propagated))
    energy = x_nodes.square().sum(0).clamp_min(eps)
    quotients = torch.stack([(x_nodes * p).sum(0) / energy for p in propagated])
    spectral = sum(w * (1 - q).abs().mean() for w, q in zip(weights, quotients))
    unit = x_nodes / energy.sqrt()
    gram = unit.T @ unit
    m = gram.shape[0]
    ortho = (gram - torch.diag(gram.diagonal())).square().sum() / max(1, m * (m - 1))
    return SpectralLoss(spectral + ortho_weight * ortho, spectral, ortho, quotients.detach())


def weighted_matmul(graphs: Sequence[SparseGraph], weights: Sequence[float] | None, x: Tensor) -> Tensor:
    """``(sum_l w_l S_l) @ x`` with normalised weights."""
    return sum(w * g.matmul(x) for w, g in zip(normalized_weights(weights, len(graphs)), graphs))


def rayleigh_ritz(graphs: Sequence[SparseGraph], weights: Sequence[float] | None, x: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormalise ``x`` and rotate it to the Ritz vectors of the weighted operator, ordered by decreasing value."""
    q, _ = torch.linalg.qr(x.double())
    small = q.T @ weighted_matmul(graphs, weights, q)
    values, rotation = torch.linalg.eigh((small + small.T) / 2)
    order = values.argsort(descending=True)
    return (q @ rotation[:, order]).to(x.dtype), values[order].to(x.dtype)
