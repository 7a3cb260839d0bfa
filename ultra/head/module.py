"""The head as a Lightning module: fitted exactly (one pass over the nodes) or by AdamW on node batches."""
from __future__ import annotations

import logging
import warnings

import pytorch_lightning as pl
import torch

from ..errors import ConfigError
from .exact import QuadraticForms
from .loss import head_loss
from .projection import ProjectionHead

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` returned `None`")  # the exact solver
SOLVERS = ("exact", "sgd")
SGD_OPTIONS = ("lr", "weight_decay", "ortho_weight")
"""Options of the SGD solver only: the exact solve has no learning rate and meets orthogonality as a constraint."""


class SpectralHeadModule(pl.LightningModule):
    """The head g, fitted to the spectral-consistency loss on node batches.

    Args:
        in_dim: token dimension (linked from the data module's ``head_dim``).
        out_dim: embedding dimension m (about 50; well above the number of classes).
        head: ``linear`` (one matrix W) or ``mlp``.
        hidden_dim: hidden width of the MLP head (``mlp`` only).
        solver: ``exact`` (linear head only): the loss's exact optimum from one pass over every
            node (:mod:`ultra.head.exact`; ``trainer.max_epochs`` is then 1); ``sgd``: AdamW on random node batches.
        ridge: ridge of the exact solve (see :mod:`ultra.head.exact`).
        trivial_threshold: near-constant directions above this quotient are dropped by the exact solve.
        lr: AdamW learning rate (``sgd`` only).
        weight_decay: AdamW weight decay (``sgd`` only).
        ortho_weight: lambda of the orthogonality term (``sgd`` only; the exact solution meets it as a constraint).
        view_weight: alpha of the view term.
        graph_weights: weights of the graphs (linked from the data module).
    """

    def __init__(self, in_dim: int, out_dim: int = 50, head: str = "linear", hidden_dim: int = 512,
                 solver: str = "exact", ridge: float = 1e-4, trivial_threshold: float = 0.9,
                 lr: float = 1e-3, weight_decay: float = 0.0, ortho_weight: float = 1.0, view_weight: float = 0.1,
                 graph_weights: list[float] | None = None):
        super().__init__()
        if solver not in SOLVERS:
            raise ConfigError(f"model.solver must be one of {SOLVERS}, got '{solver}'")
        if solver == "exact" and head != "linear":
            raise ConfigError(f"model.solver 'exact' solves the linear head; use model.solver sgd for head '{head}'")
        if solver == "exact" and not 1 <= out_dim < in_dim:
            raise ConfigError(f"model.solver 'exact' needs 1 <= out_dim < the token dimension {in_dim}, got {out_dim}")
        self.save_hyperparameters()
        self.head = ProjectionHead(in_dim, out_dim, head, hidden_dim)
        self.graph_weights = list(graph_weights) if graph_weights else None
        self.forms: QuadraticForms | None = None
        self.automatic_optimization = solver == "sgd"

    @staticmethod
    def head_settings(init_args: dict) -> dict:
        """The arguments that determine the fitted head (the SGD options under ``sgd`` only, ``hidden_dim`` for an MLP)."""
        drop = set() if init_args.get("solver") == "sgd" else set(SGD_OPTIONS)
        if init_args.get("head") != "mlp":
            drop.add("hidden_dim")
        return {k: v for k, v in init_args.items() if k not in drop}

    @property
    def node_order(self) -> str:
        """The node batches this module trains on (see :class:`~ultra.head.batches.NodeBatches`)."""
        return "sweep" if self.hparams.solver == "exact" else "random"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.solver == "exact" and self.trainer.max_epochs != 1:
            log.info("exact solver: one pass over the training tokens (max_epochs %s -> 1)", self.trainer.max_epochs)
            self.trainer.fit_loop.max_epochs = 1

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        weights = self.graph_weights or [1.0] * len(batch["graphs"])
        size = int(batch["nodes"].numel())
        if self.hparams.solver == "exact":
            if self.forms is None:
                self.forms = QuadraticForms(self.hparams.in_dim, weights)
            self.forms.update(batch)
            return None
        parts = head_loss(self.head(batch["features"]), batch, weights, self.hparams.ortho_weight, self.hparams.view_weight)
        self.log("loss", parts["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, batch_size=size)
        return parts["loss"]

    def on_train_epoch_end(self) -> None:
        if self.hparams.solver != "exact":
            return
        if self.forms is None:
            raise RuntimeError("the exact solver saw no node batch")
        strategy = self.trainer.strategy
        self.forms.reduce(lambda t: strategy.reduce(t.to(strategy.root_device), reduce_op="sum"))
        solution = self.forms.solve(self.hparams.out_dim, self.hparams.view_weight, self.hparams.ridge,
                                    self.hparams.trivial_threshold)
        self.forms = None
        with torch.no_grad():
            self.head.net.weight.copy_(solution.weight)
        self.log_dict({"train/quotient": solution.quotients.mean().float(), "train/view": solution.view.mean().float()})

    def configure_optimizers(self):
        if self.hparams.solver == "exact":
            return None
        return torch.optim.AdamW(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
