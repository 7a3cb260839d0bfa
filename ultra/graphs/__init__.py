"""Affinity graphs over tokens, from the kNN search to the operators the head is trained on.

- ``sparse``: sparse normalised operators (:class:`SparseGraph`, :class:`SparseRows`) and their row blocks.
- ``knn``: the cosine kNN build inside and across images (:class:`KnnConfig`, :class:`GraphSpec`).
- ``correspondence``: token correspondences between the views (crops, flips) of one image.
- ``store``: the global operators over a feature cache, built once and memory-mapped from disk.
- ``spectral``: the spectral criterion (Rayleigh quotients, orthogonality) on those operators.
"""
