"""Looking inside a frozen ViT: the side branches of the data flow.

- ``solver``: layer-distributed spectral clustering by gradient descent on a free table.
- ``whatwhere``: figures that test "key-query graphs say where, value graphs say what".
- ``relevance``: ULTra relevance maps of latent tokens (gradient-weighted attention rollout).
- ``segments``: per-image segments and clicked-object masks from those maps.
- ``masks``: a map to a mask (Otsu's threshold or a fraction of the maximum).
- ``points``: a clicked pixel (its text, its check, its token and pixels, the part of a mask under it).
"""
