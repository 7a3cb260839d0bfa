"""Cosine k-means: it recovers separated clusters, keeps its best restart and is deterministic."""

import pytest
import torch
from helpers import clustered_tokens

from ultra.evaluation.metrics import UnsupervisedSegmentationMetric
from ultra.readout.kmeans import assign, kmeans


def test_kmeans_recovers_separated_clusters_and_a_sample_agrees():
    tokens, labels = clustered_tokens(images=20, tokens=50, clusters=5, spread=3.0)
    x = tokens.reshape(-1, tokens.shape[-1])
    inertias = {}
    for sample_size in (None, 256):
        result = kmeans(x, 5, restarts=4, steps=200, sample_size=sample_size, seed=1)
        predicted, cosine = assign(x, result.centroids)
        metric = UnsupervisedSegmentationMetric(5)
        metric.update(predicted.view(1, 1, -1), labels.view(1, 1, -1))
        assert metric.compute()["acc"] > 0.99, sample_size
        assert torch.allclose(result.centroids.norm(dim=1), torch.ones(5), atol=1e-5)
        inertias[sample_size] = result.inertia
    # the sampled fit reports its inertia over all rows (of the centroids before its final pass)
    assert inertias[256] == pytest.approx(inertias[None], rel=0.02)


def test_kmeans_keeps_the_best_restart_and_is_deterministic():
    x = torch.randn(300, 8)
    a = kmeans(x, 6, restarts=5, seed=3)
    b = kmeans(x, 6, restarts=5, seed=3)
    assert torch.equal(a.centroids, b.centroids)
    first = kmeans(x, 6, restarts=1, seed=3)  # the same computation as restart 0 of `a`
    assert a.inertia <= first.inertia
    if a.restart != 0:
        assert a.inertia < first.inertia
    with pytest.raises(ValueError, match="k=400 with 300 rows"):
        kmeans(x, 400)
