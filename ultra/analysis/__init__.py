"""Looking inside a frozen ViT: the side branches of the data flow.

- ``solver``: layer-distributed spectral clustering by gradient descent on a free table.
- ``whatwhere``: figures that test "key-query graphs say where, value graphs say what".
- ``relevance``: ULTra relevance maps of latent tokens (gradient-weighted attention rollout).
- ``segments``: per-image segments and clicked-object masks from those maps.
"""
