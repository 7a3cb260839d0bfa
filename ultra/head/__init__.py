"""The external transformation matrix and how it is fitted.

- ``projection``: the head (one matrix W, or an MLP).
- ``loss``: the spectral-consistency loss of a node batch (spectral term, orthogonality, view term).
- ``exact``: the loss's exact optimum for the linear head (two D x D forms, one generalised eigh).
- ``batches``: minibatches of nodes with their operator rows.
- ``module``, ``datamodule``: the Lightning module (exact or SGD) and the data module that serves it.
"""
