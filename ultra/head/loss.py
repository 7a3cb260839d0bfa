"""The spectral-consistency loss of a head's outputs: spectral term, orthogonality, view consistency.

``L = L_spec(z; S_l of the graphs) + alpha * L_view``, where ``L_spec`` (with its orthogonality
term) is :func:`ultra.graphs.spectral.spectral_loss` on the batch's node rows and ``L_view`` compares the
embedding of each token with the embedding of the same image point in the other views of its
image (geometric augmentation undone by the view operator, :mod:`ultra.graphs.correspondence`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..graphs.sparse import RowBlock
from ..graphs.spectral import spectral_loss


def view_consistency_loss(z_nodes: Tensor, partners: Tensor, has_partner: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over embedding dimensions of the squared distance between each node's and its partners' embeddings.

    Both are scaled by the batch's column norms (as in the spectral term), so the value is about
    2 for unrelated embeddings and 0 when every view agrees.
    """
    if not bool(has_partner.any()):
        return z_nodes.sum() * 0.0
    scale = z_nodes.square().sum(0).clamp_min(eps).rsqrt()
    diff = (z_nodes[has_partner] - partners[has_partner]) * scale
    return diff.square().sum(0).mean() * (z_nodes.shape[0] / has_partner.sum())


def propagate_batch(
    batch: dict, x: Tensor, views: bool = True
) -> tuple[Tensor, list[Tensor], Tensor | None, Tensor | None]:
    """For a node batch (see :mod:`ultra.graphs.store`) and ``x`` at its touched nodes: ``x`` at the batch's nodes,
    the rows of every graph times ``x``, and the view partners of the nodes with the mask of nodes that have one."""
    nodes = batch["nodes"]
    columns = torch.arange(x.shape[0], device=x.device)

    def block(entries) -> RowBlock:
        rows, cols, vals = entries
        return RowBlock.from_coo(nodes, columns, rows, cols, vals.to(x.dtype))

    propagated = [block(e).propagate(x) for e in batch["graphs"]]
    partners = has_partner = None
    if views and batch.get("view") is not None:
        has_partner = torch.zeros(nodes.numel(), dtype=torch.bool, device=x.device)
        has_partner[batch["view"][0]] = True
        partners = block(batch["view"]).propagate(x)
    return x[nodes], propagated, partners, has_partner


def head_loss(
    z: Tensor, batch: dict, graph_weights: Sequence[float], ortho_weight: float, view_weight: float
) -> dict[str, Tensor]:
    """The full loss on a node batch (see :mod:`ultra.graphs.store`) given the head's outputs ``z`` for its touched
    nodes."""
    z_nodes, propagated, partners, has_partner = propagate_batch(batch, z, views=bool(view_weight))
    spectral = spectral_loss(z_nodes, propagated, graph_weights, ortho_weight)
    parts = {"spectral": spectral.spectral, "ortho": spectral.ortho, "quotient": spectral.quotients.mean()}
    total = spectral.total
    if partners is not None:
        parts["view"] = view_consistency_loss(z_nodes, partners, has_partner)
        total = total + view_weight * parts["view"]
    parts["loss"] = total
    return parts
