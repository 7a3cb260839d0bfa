"""The exact optimum of the linear head's loss: generalised eigenvectors of two D x D forms, from one pass.

For a linear head ``z = X w`` with columns normalised over the tokens, a column's spectral quotient
is ``w^T (X^T S X) w / w^T (X^T X) w`` and its view term (:func:`ultra.head.loss.view_consistency_loss`)
is ``w^T C w / w^T (X^T X) w`` with ``C = (N / N_v) sum_i (x_i - (V X)_i)(x_i - (V X)_i)^T`` over the
``N_v`` tokens with a partner in another view. The orthogonality term is zero exactly when the
columns are ``X^T X``-orthogonal. So the loss ``mean_c (1 - q_c) + alpha * mean_c v_c + lambda * ortho``
is minimised by the top-m generalised eigenvectors of ``(sum_l w_l X^T S_l X - alpha C, X^T X)``
(Locality Preserving Projections with the spectral graph): no learning rate, no steps, no seed.

:class:`QuadraticForms` accumulates the forms over node batches that cover every node once
(``NodeBatches(order="sweep")``), in float64, and can be summed across processes;
:meth:`QuadraticForms.solve` returns the head's matrix.

The ridge: ``X^T X`` of frozen-transformer tokens is badly conditioned (DINOv2's residual stream
has a few channels hundreds of times larger than the rest, and float16 caching adds noise in
the small directions), and a generalised eigenvector living in a near-null direction of
``X^T X`` can show a large quotient from noise alone. ``X^T X + ridge * tr(X^T X) / D * I`` bounds
the condition number by about ``1 / ridge`` relative to the average channel energy, is invariant
to the scale of the tokens, and at ``1e-4`` leaves every direction with real energy untouched.

The trivial direction: ``S = D^-1/2 A D^-1/2`` has the leading eigenvector ``D^1/2 1`` (quotient 1),
which tokens with a common mean can nearly reproduce (``z`` almost constant over the set). Such a
column only adds the same offset to every embedding; columns whose squared mean is more than
``trivial_threshold`` of their mean square are dropped, and the next eigenvectors take their place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..graphs.spectral import normalized_weights
from .loss import propagate_batch

log = logging.getLogger(__name__)


@dataclass
class LinearHeadSolution:
    weight: Tensor  # [m, D] float32: the head's matrix (nn.Linear layout), outputs of unit RMS over the set
    quotients: Tensor  # [m] spectral quotient of each output column (weighted over graphs)
    view: Tensor  # [m] view term of each column (0 without views)
    dropped: int  # near-constant columns left out


class QuadraticForms:
    """Running float64 sums, over node batches, of the forms that define the linear head's loss."""

    def __init__(self, dim: int, graph_weights: Sequence[float]):
        self.graph_weights = normalized_weights(graph_weights, len(graph_weights))
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.spectral, self.gram, self.view = zeros(dim, dim), zeros(dim, dim), zeros(dim, dim)
        self.total = zeros(dim)
        self.counts = zeros(2)  # tokens, tokens with a view partner

    @torch.no_grad()
    def update(self, batch: dict) -> None:
        """Add a node batch; the batches must cover every node exactly once."""
        if len(batch["graphs"]) != len(self.graph_weights):
            raise ValueError(
                f"the batch has {len(batch['graphs'])} graphs, the forms {len(self.graph_weights)} weights"
            )
        x = batch["features"].float()
        x_nodes, propagated, partners, has_partner = propagate_batch(batch, x)
        self.gram += (x_nodes.T @ x_nodes).double().cpu()
        self.total += x_nodes.sum(0).double().cpu()
        for w, p in zip(self.graph_weights, propagated):
            self.spectral += w * (x_nodes.T @ p).double().cpu()
        self.counts[0] += x_nodes.shape[0]
        if partners is not None:
            diff = (x_nodes - partners)[has_partner]
            self.view += (diff.T @ diff).double().cpu()
            self.counts[1] += diff.shape[0]

    def reduce(self, sum_across: Callable[[Tensor], Tensor]) -> None:
        """Sum the forms across processes (``sum_across`` returns the sum of a tensor over all of them)."""
        for name in ("spectral", "gram", "view", "total", "counts"):
            setattr(self, name, sum_across(getattr(self, name)).double().cpu())

    def solve(
        self, out_dim: int, view_weight: float = 0.0, ridge: float = 1e-4, trivial_threshold: float = 0.9
    ) -> LinearHeadSolution:
        """The matrix ``[out_dim, D]`` that minimises the loss (see the module docstring)."""
        dim = self.gram.shape[0]
        n, n_view = float(self.counts[0]), float(self.counts[1])
        if n == 0:
            raise ValueError("no tokens were accumulated: the exact solve has nothing to fit")
        if not 1 <= out_dim < dim:
            raise ConfigError(f"the exact solver needs 1 <= out_dim < the token dimension {dim}, got out_dim={out_dim}")
        if ridge < 0:
            raise ConfigError(f"ridge must be >= 0, got {ridge}")
        gram = self.gram.numpy()
        view = self.view.numpy() * (n / n_view) if n_view else np.zeros_like(gram)
        target = self.spectral.numpy() - view_weight * view
        target = (target + target.T) / 2
        regularised = gram + ridge * np.trace(gram) / dim * np.eye(dim)
        extra = min(dim - out_dim, 4)
        values, vectors = scipy.linalg.eigh(target, regularised, subset_by_index=[dim - out_dim - extra, dim - 1])
        if not np.isfinite(values).all() or not np.isfinite(vectors).all():
            raise DataError(
                f"the exact solve over {int(n)} tokens is not finite: the tokens carry no variation the graphs can "
                "use (e.g. images of one colour); train on varied images"
            )
        vectors = vectors[:, np.argsort(values)[::-1]]
        energy = np.einsum("dc,de,ec->c", vectors, gram, vectors)
        mean_square = (vectors.T @ self.total.numpy()) ** 2 / (n * energy)
        keep = np.flatnonzero(mean_square <= trivial_threshold)[:out_dim]
        if keep.size < out_dim:
            raise ConfigError(f"only {keep.size} of {out_dim} directions are not near-constant; lower out_dim")
        vectors = vectors[:, keep] * np.sqrt(n / energy[keep])  # unit RMS per output column
        vectors *= np.sign(vectors[np.abs(vectors).argmax(0), np.arange(out_dim)])  # a fixed sign per column
        quad = lambda m: np.einsum("dc,de,ec->c", vectors, m, vectors) / n  # noqa: E731
        solution = LinearHeadSolution(
            torch.from_numpy(vectors.T.copy()).float(),
            torch.from_numpy(quad(self.spectral.numpy())),
            torch.from_numpy(quad(view)),
            int(keep[-1] + 1 - out_dim),
        )
        log.info(
            "exact head: %d tokens, mean quotient %.4f, mean view term %.4f, %d near-constant direction(s) dropped",
            int(n),
            float(solution.quotients.mean()),
            float(solution.view.mean()),
            solution.dropped,
        )
        return solution
