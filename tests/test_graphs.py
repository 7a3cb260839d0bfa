"""Affinity graphs: the kNN build against a dense reference, the stored graphs, view correspondences, token spaces."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import planted_partition

from ultra.analysis.solver import exact_eigenvectors
from ultra.data import FiveCropViews, SyntheticScenes
from ultra.data.cache import FeatureCache
from ultra.errors import ConfigError
from ultra.graphs.correspondence import _token_points, view_correspondences
from ultra.graphs.knn import (
    GraphSpec,
    KnnConfig,
    affinity_graphs,
    knn_graph,
    nearest_images,
    topk_blockwise,
)
from ultra.graphs.sparse import SparseGraph, lift_graph, pooling_matrix
from ultra.graphs.spectral import spectral_loss
from ultra.graphs.store import (
    build_view_operator,
    load_or_build_graphs,
)


def test_view_operator_built_in_chunks_of_images_equals_the_per_image_correspondences():
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(5, 3, 2, generator=g) * 0.4
    geometry = torch.cat([corner, corner + 0.6, (torch.rand(5, 3, 1, generator=g) > 0.5).float()], -1).reshape(15, 5)
    parts = [view_correspondences(geometry[i * 3 : (i + 1) * 3], (4, 4), view_offset=i * 3) for i in range(5)]
    rows, cols, vals = (torch.cat(p) for p in zip(*parts))
    expected = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (240, 240)).to_dense()
    for chunk in (1, 2, 5):
        operator = build_view_operator(geometry, 3, (4, 4), chunk_images=chunk)
        assert torch.allclose(operator.csr().to_dense(), expected)
        rows = torch.repeat_interleave(torch.arange(240), operator.indptr.diff())
        assert (torch.diff(rows * 240 + operator.indices.long()) > 0).all()  # CSR order: by row, then column, once


def test_view_correspondences_undo_crops_and_flips():
    geometry = torch.tensor([[0.0, 0.0, 0.6, 0.6, 0.0], [0.2, 0.2, 0.8, 0.8, 1.0], [0.4, 0.4, 1.0, 1.0, 0.0]])
    rows, cols, vals = view_correspondences(geometry, (6, 6))
    c = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (108, 108)).to_dense()
    points = _token_points(geometry, (6, 6)).reshape(-1, 2)
    f = points[:, 0] + 2 * points[:, 1]  # any linear function of the image position
    has = c.sum(1) > 0
    assert torch.allclose(c.sum(1)[has], torch.ones(int(has.sum())))
    # away from crop borders (where bilinear weights are clamped) C reproduces the function exactly
    interior = has.clone()
    for view in range(3):
        x0, y0, x1, y1, _ = geometry[view]
        p = points[view * 36 : (view + 1) * 36]
        near_edge = torch.zeros(36, dtype=torch.bool)
        for other in range(3):
            if other != view:
                a0, b0, a1, b1, _ = geometry[other]
                margin = 0.5 * (a1 - a0) / 6
                inside = (p[:, 0] >= a0) & (p[:, 0] <= a1) & (p[:, 1] >= b0) & (p[:, 1] <= b1)
                near = (
                    (p[:, 0] < a0 + margin)
                    | (p[:, 0] > a1 - margin)
                    | (p[:, 1] < b0 + margin)
                    | (p[:, 1] > b1 - margin)
                )
                near_edge |= inside & near
        interior[view * 36 : (view + 1) * 36] &= ~near_edge
    assert interior.sum() > 20
    assert torch.allclose((c @ f)[interior], f[interior], atol=1e-5)
    assert interior[36:72].sum() > 5  # the flipped view is among the exactly reproduced points


def test_graphs_searched_in_a_centred_or_whitened_token_space(tmp_path, tiny_vit):
    from ultra.graphs.store import search_tokens

    data = SyntheticScenes(3, 96, 4, seed=0)
    cache = FeatureCache.open_or_build(data, tiny_vit, [("x", 2)], FiveCropViews(64, 96), tmp_path, progress=False)
    raw = cache.tensor(("x", 2)).reshape(-1, 48).double()
    assert torch.equal(search_tokens(cache, ("x", 2), "raw"), cache.tensor(("x", 2)))
    centred = search_tokens(cache, ("x", 2), "centred").reshape(-1, 48).double()
    assert torch.allclose(centred, raw - raw.mean(0), atol=2e-2)
    whitened = search_tokens(cache, ("x", 2), "whitened").reshape(-1, 48).double()
    covariance = (whitened - whitened.mean(0)).T @ (whitened - whitened.mean(0)) / len(whitened)
    assert whitened.mean(0).abs().max() < 1e-2 and torch.allclose(
        covariance, torch.eye(48, dtype=torch.float64), atol=5e-2
    )
    assert (cache.path / "graphs" / "whitened-x2.npy").is_file()  # written once, beside the graphs
    # the space is part of the graph's settings: another space, another graph
    spec = [GraphSpec("xx", 2)]
    plain = load_or_build_graphs(cache, spec, KnnConfig(k_any=5, candidate_images=None), False).graphs[0]
    white = load_or_build_graphs(
        cache, spec, KnnConfig(k_any=5, candidate_images=None, space="whitened"), False
    ).graphs[0]
    expected = knn_graph(search_tokens(cache, ("x", 2), "whitened"), config=KnnConfig(k_any=5, candidate_images=None))
    assert torch.equal(white.indices, expected.indices) and not torch.equal(white.indices, plain.indices)


def _dense_reference(rows, cols, k_intra, k_inter, threshold, candidates=None, k_any=0):
    """Straightforward dense construction of the same graph: S = D^-1/2 ((W + W^T)/2) D^-1/2."""
    b, n, _ = rows.shape
    r, c = F.normalize(rows.reshape(b * n, -1), dim=-1), F.normalize(cols.reshape(b * n, -1), dim=-1)
    sim = r @ c.T
    image = torch.arange(b).repeat_interleave(n)
    w = torch.zeros(b * n, b * n)
    for i in range(b * n):
        same = image == image[i]
        intra = sim[i].masked_fill(~same, -float("inf"))
        intra[i] = -float("inf")
        for j in intra.topk(k_intra).indices:
            w[i, j] = sim[i, j]
        if k_inter and b > 1:
            allowed = ~same if candidates is None else torch.isin(image, candidates[image[i]])
            inter = sim[i].masked_fill(~allowed, -float("inf"))
            for j in inter.topk(k_inter).indices:
                w[i, j] = sim[i, j]
        if k_any:
            allowed = (
                torch.ones(b * n, dtype=torch.bool)
                if candidates is None
                else (torch.isin(image, candidates[image[i]]) | (image == image[i]))
            )
            anywhere = sim[i].masked_fill(~allowed, -float("inf"))
            anywhere[i] = -float("inf")
            for j in anywhere.topk(k_any).indices:
                w[i, j] = sim[i, j]
    w = torch.where(w >= threshold, w, torch.zeros_like(w)) * (w != 0)
    a = (w + w.T) / 2
    d = a.sum(1)
    inv = d.clamp_min(1e-12).rsqrt()
    return inv[:, None] * a * inv[None, :], d


@pytest.mark.parametrize(
    "k_intra, k_inter, k_any, threshold",
    [(3, 2, 0, 0.0), (4, 0, 0, 0.6), (2, 5, 0, 0.3), (0, 0, 6, 0.0), (3, 1, 5, 0.2)],
)
def test_knn_graph_matches_dense_construction(k_intra, k_inter, k_any, threshold):
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randn(3, 10, 6, generator=g) + 1, torch.randn(3, 10, 6, generator=g) + 1
    graph = knn_graph(
        rows,
        cols,
        KnnConfig(
            k_intra=k_intra, k_inter=k_inter, k_any=k_any, threshold=threshold, max_block=37, candidate_images=None
        ),
    )  # tiny blocks
    expected, degree = _dense_reference(rows, cols, k_intra, k_inter, threshold, k_any=k_any)
    assert torch.allclose(graph.to_dense(), expected, atol=1e-6)
    assert torch.allclose(graph.degree, degree, atol=1e-6)
    walk = graph.random_walk().to_dense()
    connected = degree > 0
    assert torch.allclose(walk.sum(1)[connected], torch.ones(int(connected.sum())), atol=1e-5)
    eig_s = torch.linalg.eigvalsh(graph.to_dense().double())
    assert eig_s.max() <= 1 + 1e-6 and eig_s.min() >= -1 - 1e-6


def test_candidate_images_restrict_the_inter_image_search():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(5, 6, 4, generator=g) + 1
    for k_any in (0, 4):
        graph = knn_graph(rows, config=KnnConfig(k_intra=2, k_inter=3, k_any=k_any, threshold=0.0, candidate_images=2))
        candidates = nearest_images(F.normalize(rows, dim=-1).mean(1), 2)
        expected, _ = _dense_reference(rows, rows, 2, 3, 0.0, candidates, k_any=k_any)
        assert torch.allclose(graph.to_dense(), expected, atol=1e-6)


def test_grouped_views_leave_their_slots_to_other_images():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, 5, generator=g)
    rows = base.repeat_interleave(3, 0) + 0.01 * torch.randn(12, 6, 5, generator=g)  # 3 near-identical views per image
    groups = torch.arange(4).repeat_interleave(3)
    n = 6
    for config in (
        KnnConfig(k_intra=0, k_inter=0, k_any=4, candidate_images=None),
        KnnConfig(k_intra=0, k_inter=4, k_any=0, candidate_images=None),
        KnnConfig(k_intra=0, k_inter=0, k_any=4, candidate_images=5),
    ):
        plain = knn_graph(rows, config=config).to_dense()
        grouped = knn_graph(rows, config=KnnConfig(**{**vars(config), "group_views": True}), groups=groups).to_dense()
        node_view = torch.arange(12 * n) // n
        same_image_other_view = (groups[node_view][:, None] == groups[node_view][None, :]) & (
            node_view[:, None] != node_view[None, :]
        )
        assert plain[same_image_other_view].sum() > 0  # without grouping, the other views take the slots
        assert grouped[same_image_other_view].sum() == 0
        assert (grouped > 0).sum(1).min() >= 4  # every token still has its neighbours
    with pytest.raises(ValueError, match="source image of each of the 12 views"):
        knn_graph(rows, config=KnnConfig(k_intra=0, k_inter=0, k_any=4, group_views=True, candidate_images=None))


def test_topk_blockwise_equals_plain_topk():
    g = torch.Generator().manual_seed(2)
    q, k = F.normalize(torch.randn(7, 5, generator=g), dim=-1), torch.randn(50, 5, generator=g) * 3
    v, i = topk_blockwise(q, k.half(), 6, max_block=7 * 4, exclude=(10, 20))
    sim = q @ F.normalize(k.half().float(), dim=-1).T
    sim[:, 10:20] = -float("inf")
    ref_v, _ = sim.topk(6, dim=1)
    assert torch.allclose(v, ref_v)
    assert torch.allclose(sim.gather(1, i), ref_v)


def test_graph_rows_give_the_rows_of_the_operator():
    g = torch.Generator().manual_seed(3)
    graph = knn_graph(
        torch.randn(4, 9, 5, generator=g),
        config=KnnConfig(k_intra=3, k_inter=3, k_any=0, candidate_images=None),
        teleport=0.5,
    )
    x = torch.randn(36, 4, generator=g)
    nodes = torch.tensor([3, 17, 30, 31])
    rows = graph.rows(nodes)
    sparse_part = rows.block.to_dense() @ x[rows.neighbors]
    full = graph.matmul(x)
    dense = graph.to_dense() @ x
    assert torch.allclose(full, dense, atol=1e-5)
    teleport_free = SparseGraph(graph.indptr, graph.indices, graph.values, graph.degree).matmul(x)
    assert torch.allclose(sparse_part, teleport_free[nodes], atol=1e-5)
    all_rows = graph.rows(torch.arange(36))
    assert torch.allclose(all_rows.propagate(x[all_rows.neighbors], x), dense, atol=1e-5)


def test_save_and_load_roundtrip(tmp_path):
    graph = knn_graph(
        torch.randn(2, 8, 3), config=KnnConfig(k_intra=2, k_inter=2, k_any=0, candidate_images=None), teleport=0.1
    )
    graph.save(tmp_path / "g.safetensors")
    back = SparseGraph.load(tmp_path / "g.safetensors")
    assert torch.equal(back.to_dense(), graph.to_dense()) and back.teleport == 0.1
    assert back.indices.dtype == torch.int32 and back.indptr.dtype == torch.int64


def test_loaded_graphs_are_memory_mapped_not_copied(tmp_path):
    """Every process (DDP ranks, loader workers) maps the same file: one copy in the page cache."""
    path = tmp_path / "g.safetensors"
    knn_graph(torch.randn(40, 64, 8), config=KnnConfig(k_intra=4, k_inter=4, k_any=0, candidate_images=None)).save(path)
    back = SparseGraph.load(path)
    mapped = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) == 6 and fields[5] == str(path):
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            mapped.append((lo, hi))
    for name in ("indptr", "indices", "values", "degree"):
        pointer = getattr(back, name).data_ptr()
        assert any(lo <= pointer < hi for lo, hi in mapped), f"{name} is not backed by {path}"
    rows = back.rows(torch.arange(0, 2560, 7))  # reading rows works on the mapped arrays
    assert rows.block.shape[0] == 366
    path.write_bytes(path.read_bytes()[:-100])  # truncated: refused with the file's name
    with pytest.raises(ValueError, match="g.safetensors.*truncated"):
        SparseGraph.load(path)
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")  # a header longer than the file
    with pytest.raises(ValueError, match="g.safetensors: a safetensors header of 1000000 bytes does not fit"):
        SparseGraph.load(path)


def test_row_chunks_that_do_not_cover_the_nodes_are_refused():
    piece = (torch.ones(4, dtype=torch.long), torch.arange(4, dtype=torch.int32), torch.ones(4))
    with pytest.raises(ValueError, match="1 row chunks do not cover 10 nodes in chunks of 4 rows"):
        SparseGraph.from_row_chunks([piece], 10, 4)


@pytest.mark.parametrize("chunk", [7, 16, 1 << 20])
def test_chunked_symmetrisation_matches_the_dense_formula(chunk):
    g = torch.Generator().manual_seed(chunk)
    n = 50
    src, dst = torch.randint(n, (300,), generator=g), torch.randint(n, (300,), generator=g)
    keep = src != dst
    w = torch.rand(300, generator=g)[keep]
    dense_w = torch.zeros(n, n).index_put_((src[keep], dst[keep]), w, accumulate=True)
    directed = torch.sparse_coo_tensor(torch.stack([src[keep], dst[keep]]), w, (n, n)).coalesce().to_sparse_csr()
    graph = SparseGraph.from_directed(
        directed.crow_indices(), directed.col_indices().int(), directed.values(), teleport=0.0, chunk_rows=chunk
    )
    a = (dense_w + dense_w.T) / 2
    d = a.sum(1)
    expected = a / (d.clamp_min(1e-12).sqrt()[:, None] * d.clamp_min(1e-12).sqrt()[None, :])
    assert torch.allclose(graph.to_dense(), expected, atol=1e-6)
    assert torch.allclose(graph.degree, d, atol=1e-6)
    for r in range(n):  # rows sorted by column, no repeated entry (as CSR readers expect)
        assert torch.all(graph.indices[graph.indptr[r] : graph.indptr[r + 1]].diff() > 0)


def test_pooling_lift_keeps_eigenvalues_of_cell_constant_vectors():
    coarse = knn_graph(
        torch.randn(2, 4, 3) + 2, config=KnnConfig(k_intra=3, k_inter=4, k_any=0, candidate_images=None)
    )  # 2 images, 2x2 grids, connected
    pool = pooling_matrix((4, 4), (2, 2), images=2)
    assert torch.allclose((pool @ pool.t()).to_dense(), torch.eye(8))
    lifted = lift_graph(coarse, pool)
    values_c = torch.linalg.eigvalsh(coarse.to_dense().double())
    values_f = torch.linalg.eigvalsh(lifted.to_dense().double())
    nonzero = values_f[values_f.abs() > 1e-5]  # float32 operator: zero eigenvalues come out as ~1e-7
    assert torch.allclose(nonzero.sort().values, values_c[values_c.abs() > 1e-5].sort().values, atol=1e-5)
    top = torch.linalg.eigh(lifted.to_dense().double()).eigenvectors[:, -1].abs()
    assert torch.allclose(
        top / top.norm(), lifted.degree.double().sqrt() / lifted.degree.double().sqrt().norm(), atol=1e-5
    )


def test_affinity_graphs_from_grids_with_two_grid_sizes():
    g = torch.Generator().manual_seed(4)
    grids = {
        ("q", 0): torch.randn(2, 4, 4, 8, generator=g),
        ("k", 0): torch.randn(2, 4, 4, 8, generator=g),
        ("v", 1): torch.randn(2, 2, 2, 8, generator=g),
    }
    graphs = affinity_graphs(
        grids, [GraphSpec("kq", 0), GraphSpec("vv", 1)], KnnConfig(k_intra=3, k_inter=2, k_any=0, candidate_images=None)
    )
    assert [gr.num_nodes for gr in graphs] == [32, 32]
    with pytest.raises(ConfigError, match="graph xx1 needs 'x' tokens of layer 1"):
        affinity_graphs(grids, [GraphSpec("xx", 1)])
    with pytest.raises(ValueError, match="teleport is not supported"):
        affinity_graphs(
            grids,
            [GraphSpec("kq", 0), GraphSpec("vv", 1)],
            KnnConfig(k_intra=1, k_inter=1, k_any=0, candidate_images=None),
            teleport=0.1,
        )


def test_bad_neighbour_counts_and_specs():
    tokens = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="k_intra=5 exceeds the 4 other tokens of an image"):
        knn_graph(tokens, config=KnnConfig(k_intra=5, k_inter=1, k_any=0, candidate_images=None))
    with pytest.raises(ValueError, match="k_inter=6 exceeds the 5 tokens of the other images"):
        knn_graph(tokens, config=KnnConfig(k_intra=1, k_inter=6, k_any=0, candidate_images=None))
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        KnnConfig(threshold=-0.5, k_intra=16, k_inter=16, k_any=0, candidate_images=None)
    with pytest.raises(ValueError, match="not all 0"):
        KnnConfig(k_intra=0, k_inter=0, k_any=0, candidate_images=None)
    with pytest.raises(ValueError, match="k_any=10 exceeds the 9 other tokens of the set"):
        knn_graph(tokens, config=KnnConfig(k_intra=0, k_inter=0, k_any=10, candidate_images=None))
    with pytest.raises(ValueError, match="graph kind must be one of"):
        GraphSpec("qq", 1)


_MEMORY_SCRIPT = """
import resource, torch
from ultra.graphs.knn import knn_graph, KnnConfig
torch.manual_seed(0)
tokens = torch.randn(64, 400, 16)            # N = 25,600 nodes: a dense N x N float matrix is 2.6 GB
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
graph = knn_graph(tokens, config=KnnConfig(k_intra=8, k_inter=8, k_any=0, candidate_images=None, max_block=1 << 22))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(graph.num_nodes, graph.nnz, (after - before) // 1024)
"""


@pytest.mark.slow
def test_graph_construction_never_holds_a_dense_matrix():
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    nodes, nnz, grown_mb = map(int, out.stdout.split())
    assert nodes == 25600 and nnz <= nodes * 16 * 2
    assert grown_mb < 600, f"peak memory grew by {grown_mb} MB"


def test_graph_built_in_row_chunks_equals_the_graph_built_in_one(monkeypatch):
    import ultra.graphs.sparse

    tokens = torch.randn(7, 8, 5)
    config = KnnConfig(k_intra=2, k_inter=0, k_any=3, candidate_images=3)
    whole = knn_graph(tokens, config=config)
    monkeypatch.setattr(ultra.graphs.sparse, "ROW_CHUNK", 20)  # 2 views (16 rows) per chunk, the last one shorter
    chunked = knn_graph(tokens, config=config)
    assert torch.equal(chunked.indptr, whole.indptr) and torch.equal(chunked.indices, whole.indices)
    assert torch.allclose(chunked.values, whole.values) and torch.allclose(chunked.degree, whole.degree)


def test_loss_on_exact_eigenvectors_is_the_optimum():
    graph, _ = planted_partition([30, 40, 50], 0.4, 0.03)
    vectors, values = exact_eigenvectors([graph], None, 3)
    loss = spectral_loss(vectors, [graph.matmul(vectors)])
    assert torch.allclose(loss.quotients[0], values, atol=1e-5)
    assert loss.ortho < 1e-10
    assert torch.isclose(loss.spectral, (1 - values).mean(), atol=1e-5)
    # any other orthonormal basis of a different subspace scores worse
    other, _ = torch.linalg.qr(torch.randn(120, 3))
    assert spectral_loss(other, [graph.matmul(other)]).spectral > loss.spectral


def test_a_stale_whitened_token_file_is_named(tmp_path, tiny_vit):
    from ultra.errors import CacheError
    from ultra.graphs.store import search_tokens

    cache = FeatureCache.open_or_build(
        SyntheticScenes(2, 96, 4), tiny_vit, [("x", 2)], FiveCropViews(64, 96), tmp_path, progress=False
    )
    (cache.path / "graphs").mkdir(exist_ok=True)
    np.save(cache.path / "graphs" / "whitened-x2.npy", np.zeros((3, 48), np.float16))  # a stale file of another size
    with pytest.raises(CacheError, match=r"whitened-x2.npy holds \(3, 48\) tokens, .* expected: delete it"):
        search_tokens(cache, ("x", 2), "whitened")
