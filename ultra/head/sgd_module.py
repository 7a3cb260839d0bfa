"""The SGD solver: AdamW on random node batches, for the MLP head (or to refine a linear one)."""

from __future__ import annotations

import torch

from .loss import head_loss
from .module import HeadModule


class SGDHeadModule(HeadModule):
    """The head g (``linear`` or ``mlp``) fitted by AdamW on random node batches of the global graphs.

    Args:
        in_dim: token dimension (linked from the data module's ``head_dim``).
        out_dim: embedding dimension m (about 50; well above the number of classes).
        view_weight: alpha of the view term.
        architecture: ``linear`` (one matrix W) or ``mlp`` (Linear-GELU-Linear).
        hidden_dim: hidden width of the MLP head (``mlp`` only).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        ortho_weight: lambda of the orthogonality term.
        graph_weights: weights of the graphs (linked from the data module).
    """

    solver = "sgd"
    node_order = "random"

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 50,
        view_weight: float = 0.1,
        architecture: str = "linear",
        hidden_dim: int = 512,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ortho_weight: float = 1.0,
        graph_weights: list[float] | None = None,
    ):
        super().__init__(in_dim, out_dim, view_weight, graph_weights, architecture, hidden_dim)
        self.save_hyperparameters()

    @classmethod
    def head_arguments(cls, init_args: dict) -> dict:
        """Every argument but ``hidden_dim`` of a linear head (it builds nothing)."""
        return {k: v for k, v in init_args.items() if k != "hidden_dim" or init_args.get("architecture") == "mlp"}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        size = int(batch["nodes"].numel())
        parts = head_loss(
            self.head(batch["features"]),
            batch,
            self.weights_for(batch),
            self.hparams.ortho_weight,
            self.hparams.view_weight,
        )
        self.log("loss", parts["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, batch_size=size)
        return parts["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
