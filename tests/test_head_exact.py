"""The exact linear-head solver: one pass of quadratic forms, a dense eigh reference, the loss SGD converges to."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ultra.graphs.knn import KnnConfig, knn_graph
from ultra.graphs.sparse import SparseRows
from ultra.head.batches import batch_from_entries
from ultra.head.exact import QuadraticForms
from ultra.head.loss import head_loss
from ultra.head.projection import ProjectionHead


def _problem(images=8, tokens=30, dim=10, seed=0, with_views=False):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, dim, generator=g) * 2
    x = centers[torch.randint(0, 4, (images, tokens), generator=g)] + torch.randn(images, tokens, dim, generator=g)
    x = x + 3.0  # a common mean: the trivial direction is within reach of a linear head
    graph = knn_graph(x, config=KnnConfig(k_intra=0, k_inter=0, k_any=6, candidate_images=None))
    features = x.reshape(-1, dim)
    view = None
    if with_views:  # token t of image 2i and of image 2i+1 are the same point seen twice
        n = images * tokens
        rows = torch.arange(n)
        partner = torch.where((rows // tokens) % 2 == 0, rows + tokens, rows - tokens)
        view = SparseRows.from_coo(rows, partner, torch.ones(n), n)
    return features, graph, view


def _batches(features, graph, view, blocks):
    """Consecutive node blocks covering every node once, as NodeBatches(order="sweep") serves them."""
    n = features.shape[0]
    for nodes in torch.arange(n).chunk(blocks):
        entries = [graph.entries(nodes)]
        view_entries = view.entries(nodes) if view is not None else None
        touched = [nodes, entries[0][1]] + ([view_entries[1]] if view is not None else [])
        columns = torch.unique(torch.cat(touched))
        yield batch_from_entries(features[columns], torch.searchsorted(columns, nodes), entries, columns, view_entries)


def _solve(features, graph, view, blocks=1, out_dim=4, view_weight=0.0, **kw):
    forms = QuadraticForms(features.shape[1], [1.0])
    for batch in _batches(features, graph, view, blocks):
        forms.update(batch)
    return forms.solve(out_dim, view_weight, **kw)


def _full_batch(features, graph, view):
    return next(_batches(features, graph, view, 1))


def test_exact_head_spans_the_dense_generalised_eigenvectors_and_blocks_do_not_matter():
    features, graph, _ = _problem()
    x = features.double().numpy()
    s = graph.to_dense().double().numpy()
    values, vectors = scipy.linalg.eigh(x.T @ s @ x, x.T @ x)
    reference = x @ vectors[:, ::-1][:, :4]
    solution = _solve(features, graph, None, ridge=0.0, trivial_threshold=1.0)
    z = features.double().numpy() @ solution.weight.double().numpy().T
    cosines = scipy.linalg.subspace_angles(z, reference)
    assert np.max(cosines) < 1e-4, cosines
    assert np.allclose(solution.quotients.numpy(), values[::-1][:4], atol=1e-6)
    assert np.allclose((z**2).mean(0), 1.0, atol=1e-6)  # unit RMS per output column
    blocked = _solve(features, graph, None, blocks=7, ridge=0.0, trivial_threshold=1.0)
    assert torch.allclose(blocked.weight, solution.weight, atol=1e-4)


def test_exact_head_reaches_a_loss_no_higher_than_sgd_run_to_convergence():
    """With orthogonality as a constraint (a large penalty), nothing beats the exact solution. (With a soft
    penalty, lambda = 1, SGD can trade a little correlation between columns for higher quotients.)"""
    features, graph, view = _problem(with_views=True)
    batch = _full_batch(features, graph, view)
    kwargs = dict(graph_weights=[1.0], ortho_weight=100.0, view_weight=0.5)
    solution = _solve(features, graph, view, view_weight=0.5, ridge=0.0, trivial_threshold=1.0)
    exact = head_loss(features @ solution.weight.T, batch, **kwargs)
    torch.manual_seed(0)
    head = ProjectionHead(features.shape[1], 4)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(3000):
        loss = head_loss(head(features), batch, **kwargs)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        sgd = head_loss(head(features), batch, **kwargs)
    assert sgd["ortho"] < 1e-3  # converged to (nearly) orthogonal columns
    assert exact["ortho"] < 1e-8
    assert float(exact["loss"]) <= float(sgd["loss"]) + 1e-6, (float(exact["loss"]), float(sgd["loss"]))
    assert float(exact["view"]) > 0  # the view term is paid, not ignored
    no_view = _solve(features, graph, view, view_weight=0.0, ridge=0.0, trivial_threshold=1.0)
    assert float(head_loss(features @ no_view.weight.T, batch, **kwargs)["view"]) > float(exact["view"])


def test_exact_head_drops_the_near_constant_direction():
    features, graph, _ = _problem()
    kept = _solve(features, graph, None, ridge=0.0, trivial_threshold=1.0)
    z = features @ kept.weight.T
    mean_square = z.mean(0) ** 2 / z.square().mean(0)
    assert mean_square[0] > 0.9  # the leading direction is the trivial one: almost constant
    dropped = _solve(features, graph, None, ridge=0.0, trivial_threshold=0.9)
    assert dropped.dropped >= 1
    z = features @ dropped.weight.T
    assert float((z.mean(0) ** 2 / z.square().mean(0)).max()) <= 0.9
    assert torch.allclose(dropped.weight[0], kept.weight[dropped.dropped], atol=1e-4)


def test_exact_solver_rejects_bad_settings():
    features, graph, _ = _problem()
    forms = QuadraticForms(features.shape[1], [1.0])
    with pytest.raises(ValueError, match="no tokens"):
        forms.solve(4)
    forms.update(_full_batch(features, graph, None))
    with pytest.raises(ValueError, match="out_dim < the token dimension 10"):
        forms.solve(10)
    with pytest.raises(ValueError, match="ridge"):
        forms.solve(4, ridge=-1.0)
