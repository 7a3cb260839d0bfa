"""The free-table spectral solver against eigh: planted partitions, weighted graphs, minibatches, teleport."""

import pytest
import torch
from helpers import clustered_tokens, planted_partition, subspace_cosines

from ultra.analysis.solver import SolverConfig, exact_eigenvectors, image_eigenvectors, solve
from ultra.evaluation.metrics import UnsupervisedSegmentationMetric
from ultra.graphs.knn import KnnConfig, knn_graph
from ultra.graphs.spectral import weighted_matmul
from ultra.readout.kmeans import assign, kmeans


@pytest.mark.parametrize("seed", [0, 1])
def test_solver_matches_eigh_on_planted_partitions(seed):
    graph, labels = planted_partition([50, 70, 60, 80], 0.3, 0.02, seed=seed)
    vectors, values = exact_eigenvectors([graph], None, 4)
    gap_values = exact_eigenvectors([graph], None, 5)[1]
    assert gap_values[3] - gap_values[4] > 0.2  # well-separated spectrum
    result = solve([graph], None, SolverConfig(num_vectors=4, epochs=300, lr=0.02, seed=seed))
    assert subspace_cosines(result.vectors, vectors).min() >= 0.99
    assert result.objective >= 0.99 * values.sum()
    assert torch.allclose(result.vectors.T @ result.vectors, torch.eye(4), atol=1e-4)
    assert (result.values[:-1] >= result.values[1:]).all()  # ordered
    # the planted clusters come back: k-means on the rows recovers them exactly
    clusters = kmeans(result.vectors, 4, restarts=3)
    predicted, _ = assign(result.vectors, clusters.centroids)
    metric = UnsupervisedSegmentationMetric(4)
    metric.update(predicted.view(1, 1, -1), labels.view(1, 1, -1))
    assert metric.compute()["acc"] > 0.98


def test_solver_over_several_weighted_graphs_matches_the_weighted_operator():
    a, _ = planted_partition([40, 40, 40], 0.35, 0.02, seed=3)
    b, _ = planted_partition([60, 60], 0.3, 0.02, seed=4)
    weights = [2.0, 1.0]
    vectors, values = exact_eigenvectors([a, b], weights, 3)
    result = solve([a, b], weights, SolverConfig(num_vectors=3, epochs=400, lr=0.02))
    assert subspace_cosines(result.vectors, vectors).min() >= 0.99
    assert result.objective >= 0.99 * values.sum()
    assert torch.allclose(weighted_matmul([a, b], weights, vectors), vectors * values, atol=1e-4)


def test_dataset_level_minibatches_share_one_table():
    tokens, labels = clustered_tokens()
    graph = knn_graph(tokens, config=KnnConfig(k_intra=6, k_inter=6, k_any=0, candidate_images=None), teleport=0.5)
    vectors, values = exact_eigenvectors([graph], None, 4)
    result = solve([graph], None, SolverConfig(num_vectors=4, epochs=250, lr=0.02, batch_images=3), nodes_per_image=48)
    assert subspace_cosines(result.vectors, vectors).min() >= 0.99
    assert result.objective >= 0.99 * values.sum()
    # segment ids mean the same thing in every image: one k-means over all rows matches the shared clusters
    centroids = kmeans(result.vectors, 4, restarts=3).centroids
    predicted, _ = assign(result.vectors, centroids)
    metric = UnsupervisedSegmentationMetric(4)
    metric.update(predicted.view(12, 1, 48), labels.view(12, 1, 48))
    assert metric.compute()["miou"] > 0.95


def test_teleport_stops_the_free_table_from_settling_on_component_indicators():
    # ten disconnected components of three nodes each
    rows = torch.arange(30).view(10, 3)
    src = torch.cat([rows[:, 0], rows[:, 1], rows[:, 0]])
    dst = torch.cat([rows[:, 1], rows[:, 2], rows[:, 2]])
    from ultra.graphs.sparse import SparseGraph

    plain = SparseGraph.from_affinity(src, dst, torch.ones(30), 30)
    assert exact_eigenvectors([plain], None, 4)[1].min() > 0.999  # four quotients of 1: degenerate
    regular = SparseGraph.from_affinity(src, dst, torch.ones(30), 30, teleport=1.0)
    values = exact_eigenvectors([regular], None, 4)[1]
    assert values[0] > 0.999 and values[1:].max() < 0.9


def test_solver_errors():
    graph, _ = planted_partition([5, 5], 0.9, 0.1)
    with pytest.raises(ValueError, match=r"num_vectors=10 must be in \[1, N\) with N=10"):
        solve([graph], None, SolverConfig(num_vectors=10))
    with pytest.raises(ValueError, match="nodes_per_image dividing N=10"):
        solve([graph], None, SolverConfig(num_vectors=2, batch_images=1), nodes_per_image=3)
    with pytest.raises(ValueError, match="need 1 positive graph weights"):
        solve([graph], [1.0, 2.0], SolverConfig(num_vectors=2))
    other, _ = planted_partition([6, 6], 0.9, 0.1)
    with pytest.raises(ValueError, match="graphs must share their nodes"):
        solve([graph, other], None, SolverConfig(num_vectors=2))


def test_image_eigenvectors_solve_each_images_own_graph():
    tokens, _ = clustered_tokens()
    per_image = tokens.shape[1]
    config = KnnConfig(k_intra=6, k_inter=0, k_any=0, candidate_images=None)
    vectors = image_eigenvectors(knn_graph(tokens, config=config), per_image, 3)
    assert vectors.shape == (tokens.shape[0], per_image, 3)
    for image in (0, tokens.shape[0] - 1):
        alone, _ = exact_eigenvectors([knn_graph(tokens[image : image + 1], config=config)], None, 3)
        assert subspace_cosines(vectors[image], alone).min() >= 0.999
    with pytest.raises(ValueError, match="whole images of 50"):
        image_eigenvectors(knn_graph(tokens, config=config), 50, 3)
    with pytest.raises(ValueError, match="needs a graph without teleport"):
        image_eigenvectors(knn_graph(tokens, config=config, teleport=0.5), per_image, 3)
