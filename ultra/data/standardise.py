"""Centring and PCA-whitening of cached tokens: the token spaces a graph can be searched in and a raw
baseline can be clustered in."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .cache import FeatureCache, TokenKey

SPACES = ("raw", "centred", "whitened")


@torch.no_grad()
def token_map(cache: FeatureCache, keys: Sequence[TokenKey], space: str, chunk: int = 1 << 16) -> nn.Linear | None:
    """The affine map of ``space`` over the cached tokens of ``keys`` (concatenated): None for ``raw``,
    ``x - mean`` for ``centred``, ``diag(s)^-1/2 U^T (x - mean)`` for ``whitened`` (eigenvalues floored
    at 1e-6 of the largest), from one float64 pass over every token."""
    if space not in SPACES:
        raise ConfigError(f"token space must be one of {SPACES}, got '{space}'")
    if space == "raw":
        return None
    dim, n = cache.dim(keys), cache.num_nodes
    total, outer = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, n, chunk):
        x = cache.rows(keys, torch.arange(start, min(start + chunk, n))).double()
        total += x.sum(0)
        outer += x.T @ x
    mean = total / n
    weight = torch.eye(dim, dtype=torch.float64)
    if space == "whitened":
        values, vectors = torch.linalg.eigh(outer / n - torch.outer(mean, mean))
        weight = (vectors / values.clamp_min(values.max() * 1e-6).sqrt()).T
    layer = nn.Linear(dim, dim)
    layer.weight.copy_(weight.float())
    layer.bias.copy_(-(weight @ mean).float())
    return layer
