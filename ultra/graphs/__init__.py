"""Affinity graphs over tokens, from the kNN search to the training graphs the head is fitted on.

- ``sparse``: sparse normalised operators (:class:`SparseGraph`, :class:`SparseRows`) and their row blocks.
- ``knn``: the cosine kNN build inside and across images (:class:`KnnConfig`, :class:`GraphSpec`).
- ``correspondence``: token correspondences between the views (crops, flips) of one image.
- ``store``: the training graphs over a feature cache (:class:`TrainingGraphs`), built once and memory-mapped.
- ``spectral``: the spectral criterion (Rayleigh quotients, orthogonality) on those graphs.
"""
