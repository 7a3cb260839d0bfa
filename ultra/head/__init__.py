"""The external transformation matrix and how it is fitted.

- ``projection``: the head (one matrix W, or an MLP).
- ``loss``: the spectral-consistency loss of a node batch (spectral term, orthogonality, view term).
- ``exact``: the loss's exact optimum for the linear head (two D x D forms, one generalised eigh).
- ``batches``: minibatches of nodes with their operator rows.
- ``datamodule``: :class:`HeadDataModule`, the feature cache, global graphs and node batches the head is fitted on.
- ``module``: :class:`HeadModule`, what the solvers share; one Lightning module per solver:
  ``exact_module`` (:class:`ExactHeadModule`, the default) and ``sgd_module`` (:class:`SGDHeadModule`).
"""

from .._lazy import lazy_attributes

_EXPORTS = {
    "HeadModule": "module",
    "ExactHeadModule": "exact_module",
    "SGDHeadModule": "sgd_module",
    "HeadDataModule": "datamodule",
    "ProjectionHead": "projection",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_attributes(__name__, _EXPORTS)
