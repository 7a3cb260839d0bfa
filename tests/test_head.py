"""The head's node batches and loss: batches from the global graphs, the loss on them, the data module's settings."""

import pytest
import scipy.linalg
import torch
from helpers import TINY_VIT

from ultra.data import FiveCropViews, SyntheticScenes
from ultra.data.cache import FeatureCache
from ultra.errors import ConfigError
from ultra.graphs.knn import KnnConfig, knn_graph
from ultra.graphs.spectral import spectral_loss
from ultra.graphs.store import (
    TrainingGraphs,
)
from ultra.head.batches import NodeBatches, NodeBatchSampler, batch_from_entries
from ultra.head.loss import head_loss, view_consistency_loss
from ultra.head.projection import ProjectionHead


def _tokens(n_images=6, tokens=25, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, dim, generator=g) * 2
    return centers[torch.randint(0, 3, (n_images, tokens), generator=g)] + torch.randn(
        n_images, tokens, dim, generator=g
    )


def test_full_node_batch_loss_equals_the_exact_spectral_loss():
    x = _tokens()
    graph = knn_graph(x, config=KnnConfig(k_intra=4, k_inter=4, k_any=0, candidate_images=None))
    features = x.reshape(-1, x.shape[-1])
    nodes = torch.arange(graph.num_nodes)
    batch = batch_from_entries(features, nodes, [graph.entries(nodes)], nodes, None)
    head = ProjectionHead(12, 5)
    z = head(features)
    parts = head_loss(z, batch, [1.0], ortho_weight=0.7, view_weight=0.0)
    exact = spectral_loss(z, [graph.matmul(z)], ortho_weight=0.7)
    assert torch.allclose(parts["loss"], exact.total, atol=1e-5)


def test_gradient_descent_on_node_batches_reaches_the_linear_head_optimum():
    """The linear head's optimum is a generalised eigenproblem (X^T S X w = lambda X^T X w); training must get there."""
    torch.manual_seed(0)
    x = _tokens(n_images=10, tokens=30)
    graph = knn_graph(x, config=KnnConfig(k_intra=5, k_inter=5, k_any=0, candidate_images=None))
    features = x.reshape(-1, x.shape[-1])
    xs = features.double().numpy()
    s = graph.to_dense().double().numpy()
    values = scipy.linalg.eigh(xs.T @ s @ xs, xs.T @ xs, eigvals_only=True)[::-1]
    head = ProjectionHead(12, 4)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    n = graph.num_nodes
    for step in range(600):
        nodes = torch.randperm(n, generator=torch.Generator().manual_seed(step))[:150].sort().values
        entries = graph.entries(nodes)
        columns = torch.unique(torch.cat([nodes, entries[1]]))
        batch = batch_from_entries(features[columns], torch.searchsorted(columns, nodes), [entries], columns, None)
        loss = head_loss(head(features[columns]), batch, [1.0], ortho_weight=1.0, view_weight=0.0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z = head(features)
        q, _ = torch.linalg.qr(z.double())
        reached = torch.linalg.eigvalsh(q.T @ torch.from_numpy(s) @ q).sum().item()
    # Rayleigh-Ritz of the head's column space vs the best 4-d subspace reachable by a linear head
    assert reached >= 0.97 * values[:4].sum()


def test_view_loss_is_zero_for_consistent_views_and_positive_otherwise():
    z = torch.randn(10, 3)
    has = torch.tensor([True] * 6 + [False] * 4)
    assert view_consistency_loss(z, z.clone(), has).item() == pytest.approx(0.0)
    assert view_consistency_loss(z, torch.randn(10, 3), has).item() > 0.5
    assert view_consistency_loss(z, torch.randn(10, 3), torch.zeros(10, dtype=torch.bool)).item() == 0.0


def test_node_batches_are_deterministic_and_shared_between_processes(tmp_path, tiny_vit):
    data = SyntheticScenes(3, 96, 4, seed=0)
    cache = FeatureCache.open_or_build(data, tiny_vit, [("x", 2)], FiveCropViews(64, 96), tmp_path, progress=False)
    graph = knn_graph(cache.tensor(("x", 2)), config=KnnConfig(k_intra=0, k_inter=0, k_any=5, candidate_images=None))
    batches = NodeBatches(
        cache, [("x", 2)], TrainingGraphs([graph], [1.0], None), batch_nodes=50, steps_per_epoch=6, seed=3
    )
    a, b = batches[7], batches[7]
    assert torch.equal(a["features"], b["features"]) and torch.equal(a["nodes"], b["nodes"])
    assert not torch.equal(batches.nodes(7), batches.nodes(8))
    first, second = NodeBatchSampler(batches, 2, 0), NodeBatchSampler(batches, 2, 1)
    for sampler in (first, second):
        sampler.set_epoch(2)
    assert sorted(list(first) + list(second)) == list(range(12, 18)) and not set(first) & set(second)
    assert len(first) == 3
    odd = NodeBatches(cache, [("x", 2)], TrainingGraphs([graph], [1.0], None), batch_nodes=50, steps_per_epoch=5)
    shares = [list(NodeBatchSampler(odd, 2, rank)) for rank in (0, 1)]
    assert [len(s) for s in shares] == [3, 3] and len(set(shares[0]) | set(shares[1])) == 6  # equal and distinct


def test_node_draws_are_distinct_uniform_and_cheap_at_any_size():
    class Nodes:  # only the size of the cache matters for drawing node ids
        num_nodes = 63_500_000

    batches = NodeBatches(Nodes(), [], TrainingGraphs([], [], None), batch_nodes=8192, steps_per_epoch=10, seed=1)
    nodes = batches.nodes(4)
    assert nodes.numel() == 8192 and torch.equal(nodes, torch.unique(nodes))  # distinct, sorted
    assert 0 <= int(nodes.min()) and int(nodes.max()) < Nodes.num_nodes
    assert torch.equal(nodes, batches.nodes(4)) and not torch.equal(nodes, batches.nodes(5))
    assert abs(nodes.double().mean().item() / Nodes.num_nodes - 0.5) < 0.02  # no bias towards small ids
    sweep = NodeBatches(
        Nodes(), [], TrainingGraphs([], [], None), batch_nodes=10_000_000, steps_per_epoch=1, order="sweep"
    )
    assert len(sweep) == 7 and sweep.nodes(6).numel() == 3_500_000 and sweep.nodes(7).numel() == 0
    assert int(sweep.nodes(6)[0]) == 60_000_000


def test_the_data_module_checks_what_depends_on_its_backbone_when_it_builds_it():
    from ultra.data.transforms import ViewConfig
    from ultra.head.datamodule import HeadDataModule

    tiny = dict(
        train_dataset=SyntheticScenes(2, 96, 4),
        backbone="vit_tiny_patch16_224",
        weights="random",
        model_kwargs=TINY_VIT,
    )
    with pytest.raises(ConfigError, match="data.tokens must be one of"):
        HeadDataModule(**tiny, tokens="z")
    lazy = HeadDataModule(**tiny, views=ViewConfig(size=70), feature_layers=[7])
    assert "backbone" not in vars(lazy)  # nothing built yet: a --seeds run reads its settings without weights
    with pytest.raises(ConfigError, match="data.views.size=70 is not a multiple of the patch size 16"):
        _ = lazy.backbone
    ordered = HeadDataModule(**tiny, feature_layers=[2, -3, 2])  # the head's input in the config's order, repeats too
    assert ordered.feature_keys == [("x", 2), ("x", 0), ("x", 2)] and ordered.head_dim == 3 * 48
    with pytest.raises(ConfigError, match="layer 7 is out of range"):
        _ = HeadDataModule(**tiny, feature_layers=[7]).backbone
