"""What every solver of the head shares: the head g, the graphs' weights and the view term's weight.

A solver is a Lightning module, one per module of this package (:class:`~ultra.head.exact_module.ExactHeadModule`,
the default, and :class:`~ultra.head.sgd_module.SGDHeadModule`), chosen in a training config the LightningCLI way
(``model: {class_path: ...}``). Each says which node batches it trains on (``node_order``).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from .projection import ProjectionHead


class HeadModule(pl.LightningModule):
    """The head g fitted to the spectral-consistency loss on node batches (a base class: a solver fits it).

    Args:
        in_dim: token dimension (linked from the data module's ``head_dim``).
        out_dim: embedding dimension m (about 50; well above the number of classes).
        view_weight: alpha of the view term.
        graph_weights: weights of the graphs (linked from the data module).
        architecture: the head's architecture (:class:`~ultra.head.projection.ProjectionHead`).
        hidden_dim: hidden width of an ``mlp`` head.
    """

    solver = ""
    """The solver's short name (``eval.json``'s ``settings.solver``)."""
    node_order = "random"
    """The node batches this solver trains on (see :class:`~ultra.head.batches.NodeBatches`)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 50,
        view_weight: float = 0.1,
        graph_weights: list[float] | None = None,
        architecture: str = "linear",
        hidden_dim: int = 512,
    ):
        super().__init__()
        self.head = ProjectionHead(in_dim, out_dim, architecture, hidden_dim)
        self.graph_weights = list(graph_weights) if graph_weights else None

    @classmethod
    def head_arguments(cls, init_args: dict) -> dict:
        """The arguments that determine the fitted head: a rerun resumes only under the same ones."""
        return dict(init_args)

    def weights_for(self, batch: dict) -> list[float]:
        """The graphs' weights (equal weights when none were linked)."""
        return self.graph_weights or [1.0] * len(batch["graphs"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens)
