"""From a trained head to labels, and the file that carries it.

- ``kmeans``: cosine k-means (k-means++, Lloyd, restarts, one pass over all rows).
- ``fit``: the centroids of the head's outputs and of raw tokens over the training cache.
- ``probe``: softmax regression by L-BFGS: the supervised linear probe (the reference that uses labels).
- ``self_training``: the head refitted on its own pseudo-labels, round after round (no labels).
- ``segmenter``: :class:`Segmenter`, the backbone with its readouts, from images to label maps.
- ``checkpoint``, ``checkpoint_header``: the inference checkpoint (safetensors + JSON) and its validation.
- ``crf``: dense CRF refinement of per-pixel scores.
"""
