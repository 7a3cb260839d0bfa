"""The exact solver (the default): the linear head's loss optimum from one pass over every node.

The module sums the quadratic forms of :mod:`ultra.head.exact` over node batches that cover every
node once (``node_order = "sweep"``), sums them across processes at the end of the epoch and sets
the head's matrix to their solution: no learning rate, no steps, no seed. The summed forms stay on
the module (``forms``) so that a benchmark can solve them again with other settings.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .exact import LinearHeadSolution, QuadraticForms
from .module import HeadModule

log = logging.getLogger(__name__)


class ExactHeadModule(HeadModule):
    """The linear head g fitted exactly (one pass over the nodes; ``trainer.max_epochs`` is then 1).

    Args:
        in_dim: token dimension (linked from the data module's ``head_dim``).
        out_dim: embedding dimension m (about 50; well above the number of classes).
        view_weight: alpha of the view term.
        ridge: ridge of the solve (see :mod:`ultra.head.exact`).
        trivial_threshold: near-constant directions above this quotient are dropped.
        graph_weights: weights of the graphs (linked from the data module).
    """

    solver = "exact"
    node_order = "sweep"

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 50,
        view_weight: float = 0.1,
        ridge: float = 1e-4,
        trivial_threshold: float = 0.9,
        graph_weights: list[float] | None = None,
    ):
        if not 1 <= out_dim < in_dim:
            raise ConfigError(
                f"the exact solver needs 1 <= model.out_dim < the token dimension {in_dim}, got {out_dim}"
            )
        if ridge < 0:
            raise ConfigError(f"model.ridge must be >= 0, got {ridge}")
        super().__init__(in_dim, out_dim, view_weight, graph_weights)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.forms: QuadraticForms | None = None
        self.solution: LinearHeadSolution | None = None
        self._bar_shown = False

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.max_epochs != 1:
            log.info("exact solver: one pass over the training tokens (max_epochs %s -> 1)", self.trainer.max_epochs)
            self.trainer.fit_loop.max_epochs = 1

    def on_train_start(self) -> None:
        """Lightning's "Epoch 0/0" bar says nothing true of one pass and a solve: the pass shows its own bar."""
        lightning_bar = self.trainer.progress_bar_callback
        self._bar_shown = lightning_bar is not None and lightning_bar.is_enabled
        if self._bar_shown:
            lightning_bar.disable()

    def on_train_end(self) -> None:
        if self._bar_shown:
            self.trainer.progress_bar_callback.enable()  # the evaluation's bar, later on the same trainer

    def on_train_epoch_start(self) -> None:
        self.forms = None
        self._progress = tqdm(
            total=self.trainer.num_training_batches,
            desc="exact solver: summing the loss's quadratic forms over the node batches",
            disable=not (self._bar_shown and self.trainer.is_global_zero),
            leave=False,
        )

    def training_step(self, batch: dict, batch_idx: int) -> None:
        if self.forms is None:
            self.forms = QuadraticForms(self.hparams.in_dim, self.weights_for(batch))
        self.forms.update(batch)
        self._progress.update(1)

    def on_train_epoch_end(self) -> None:
        if self.forms is None:
            raise RuntimeError("the exact solver saw no node batch")
        self._progress.close()
        log.info("exact solver: solving for the %d-dimensional head", self.hparams.out_dim)
        strategy = self.trainer.strategy
        self.forms.reduce(lambda t: strategy.reduce(t.to(strategy.root_device), reduce_op="sum"))
        self.solution = self.forms.solve(
            self.hparams.out_dim, self.hparams.view_weight, self.hparams.ridge, self.hparams.trivial_threshold
        )
        with torch.no_grad():
            self.head.net.weight.copy_(self.solution.weight)
        self.log_dict(
            {"train/quotient": self.solution.quotients.mean().float(), "train/view": self.solution.view.mean().float()}
        )

    def configure_optimizers(self) -> None:
        """None: the solve has no optimizer (Lightning's warning about it is expected, see ``fit_head``)."""
        return None
