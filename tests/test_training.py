"""Head training end to end: the loss on node batches, the cache, the CLI, readouts, export and inference."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from helpers import TINY_VIT, synthetic_config, tiny_overrides
from PIL import Image

import ultra
from ultra.cli import evaluate as eval_cli
from ultra.cli import segment as segment_cli
from ultra.cli import train as train_cli
from ultra.data import FiveCropViews, SyntheticScenes
from ultra.data.cache import FeatureCache
from ultra.errors import CheckpointError, ConfigError, CRFUnavailable, DataError
from ultra.graphs.correspondence import _token_points, view_correspondences
from ultra.graphs.knn import GraphSpec, KnnConfig, knn_graph
from ultra.graphs.spectral import spectral_loss
from ultra.graphs.store import (
    TrainingOperators,
    build_view_operator,
    load_or_build_operators,
)
from ultra.head.batches import NodeBatches, NodeBatchSampler, batch_from_entries
from ultra.head.loss import head_loss, view_consistency_loss
from ultra.head.projection import ProjectionHead
from ultra.readout import crf
from ultra.readout.checkpoint import read_checkpoint

# --- the loss on node batches -------------------------------------------------------------------


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


def test_node_batches_are_deterministic_and_shared_between_processes(tmp_path, tiny_vit):
    data = SyntheticScenes(3, 96, 4, seed=0)
    cache = FeatureCache.open_or_build(data, tiny_vit, [("x", 2)], FiveCropViews(64, 96), tmp_path, progress=False)
    graph = knn_graph(cache.tensor(("x", 2)), config=KnnConfig(k_intra=0, k_inter=0, k_any=5, candidate_images=None))
    batches = NodeBatches(
        cache, [("x", 2)], TrainingOperators([graph], [1.0], None), batch_nodes=50, steps_per_epoch=6, seed=3
    )
    a, b = batches[7], batches[7]
    assert torch.equal(a["features"], b["features"]) and torch.equal(a["nodes"], b["nodes"])
    assert not torch.equal(batches.nodes(7), batches.nodes(8))
    first, second = NodeBatchSampler(batches, 2, 0), NodeBatchSampler(batches, 2, 1)
    for sampler in (first, second):
        sampler.set_epoch(2)
    assert sorted(list(first) + list(second)) == list(range(12, 18)) and not set(first) & set(second)
    assert len(first) == 3
    odd = NodeBatches(cache, [("x", 2)], TrainingOperators([graph], [1.0], None), batch_nodes=50, steps_per_epoch=5)
    shares = [list(NodeBatchSampler(odd, 2, rank)) for rank in (0, 1)]
    assert [len(s) for s in shares] == [3, 3] and len(set(shares[0]) | set(shares[1])) == 6  # equal and distinct


def test_node_draws_are_distinct_uniform_and_cheap_at_any_size():
    class Nodes:  # only the size of the cache matters for drawing node ids
        num_nodes = 63_500_000

    batches = NodeBatches(Nodes(), [], TrainingOperators([], [], None), batch_nodes=8192, steps_per_epoch=10, seed=1)
    nodes = batches.nodes(4)
    assert nodes.numel() == 8192 and torch.equal(nodes, torch.unique(nodes))  # distinct, sorted
    assert 0 <= int(nodes.min()) and int(nodes.max()) < Nodes.num_nodes
    assert torch.equal(nodes, batches.nodes(4)) and not torch.equal(nodes, batches.nodes(5))
    assert abs(nodes.double().mean().item() / Nodes.num_nodes - 0.5) < 0.02  # no bias towards small ids
    sweep = NodeBatches(
        Nodes(), [], TrainingOperators([], [], None), batch_nodes=10_000_000, steps_per_epoch=1, order="sweep"
    )
    assert len(sweep) == 7 and sweep.nodes(6).numel() == 3_500_000 and sweep.nodes(7).numel() == 0
    assert int(sweep.nodes(6)[0]) == 60_000_000


# --- the feature cache --------------------------------------------------------------------------


class _Crashing(SyntheticScenes):
    crash_at = None

    def load(self, index):
        if index == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().load(index)


def test_a_cache_with_more_tokens_serves_runs_that_need_fewer(tmp_path, tiny_vit):
    data, views = SyntheticScenes(3, 96, 4), FiveCropViews(64, 96)
    wide = FeatureCache.open_or_build(data, tiny_vit, [("x", 1), ("n", 2), ("q", 2)], views, tmp_path, progress=False)
    narrow = FeatureCache.open_or_build(data, tiny_vit, [("n", -1)], views, tmp_path, progress=False)
    assert narrow.path == wide.path and len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
    other = FeatureCache.open_or_build(data, tiny_vit, [("v", 2)], views, tmp_path, progress=False)
    assert other.path != wide.path and other.path.name.split("-")[0] == wide.path.name.split("-")[0]
    elsewhere = FeatureCache.open_or_build(data, tiny_vit, [("x", 1)], FiveCropViews(64, 112), tmp_path, progress=False)
    assert elsewhere.path.name.split("-")[0] != wide.path.name.split("-")[0]  # other views: another source


def test_feature_cache_resumes_an_interrupted_build(tmp_path, tiny_vit):
    views = FiveCropViews(64, 96)
    reference = FeatureCache.open_or_build(
        SyntheticScenes(5, 96, 4), tiny_vit, [("x", 1), ("q", 2)], views, tmp_path / "a", batch_size=2, progress=False
    )
    crashing = _Crashing(5, 96, 4)
    crashing.crash_at = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        FeatureCache.open_or_build(
            crashing, tiny_vit, [("x", 1), ("q", 2)], views, tmp_path / "b", batch_size=2, progress=False
        )
    partial = list((tmp_path / "b").glob("*.partial"))
    assert len(partial) == 1 and json.loads((partial[0] / "progress.json").read_text())["done_images"] == 2
    assert not [
        p for p in (tmp_path / "b").iterdir() if not p.name.endswith((".partial", ".lock"))
    ]  # nothing final yet
    crashing.crash_at = None
    resumed = FeatureCache.open_or_build(
        crashing, tiny_vit, [("x", 1), ("q", 2)], views, tmp_path / "b", batch_size=2, progress=False
    )
    for key in (("x", 1), ("q", 2)):
        assert torch.equal(resumed.tensor(key), reference.tensor(key))
    assert torch.equal(resumed.geometry, reference.geometry)
    assert np.array_equal(resumed.labels, reference.labels)
    assert resumed.num_views == 25 and resumed.grid == (4, 4)


# --- the command line, readouts, export ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    config = synthetic_config(root / "tiny.yaml")
    report = train_cli.run(["--config", str(config), *tiny_overrides(root)])
    return root, config, report


def test_training_writes_checkpoints_report_and_an_inference_checkpoint(trained):
    root, _, report = trained
    assert (root / "run" / "checkpoints" / "last.ckpt").is_file()
    assert set(report["readouts"]) == {"head", "raw", "raw_centred", "raw_whitened", "probe"}
    raws = ("raw", "raw_centred", "raw_whitened")
    assert report["best_baseline"] == {"head": max(raws, key=lambda n: report["readouts"][n]["miou"])}
    for name, r in report["readouts"].items():  # every val pixel counted once; the figures follow from the confusion
        confusion = np.array(r["confusion"], dtype=np.float64)
        assert confusion.sum() == 5 * 64 * 64, name
        match = np.array(r["cluster_to_class"]) if "cluster_to_class" in r else np.arange(len(confusion))
        matched = np.zeros((4, 4))
        for cluster, cls in enumerate(match):
            if cls >= 0:
                matched[cls] += confusion[cluster]
        hits = np.diag(matched)
        assert r["acc"] == pytest.approx(hits.sum() / confusion.sum()), name
        union = matched.sum(1) + confusion.sum(0) - hits
        assert r["miou"] == pytest.approx(np.mean(hits[union > 0] / union[union > 0])), name
    assert (
        json.loads((root / "run" / "eval" / "eval.json").read_text())["readouts"]["head"]["miou"]
        == report["readouts"]["head"]["miou"]
    )
    assert (root / "run" / "eval" / "examples.png").is_file() and (
        root / "run" / "eval" / "confusion_head.png"
    ).is_file()
    meta, tensors = read_checkpoint(root / "run" / "model.safetensors")
    assert meta["classes"] == ["stuff_0", "stuff_1", "thing_2", "thing_3"]
    assert meta["cluster_to_class"]["head"] == report["readouts"]["head"]["cluster_to_class"]
    assert tensors["head.centroids"].shape == (4, 8)
    assert "raw.token_map.weight" not in tensors and tensors["raw_whitened.token_map.weight"].shape == (48, 48)


def test_whitened_baseline_readout_clusters_the_whitened_tokens(trained, tiny_vit):
    """The loaded whitened baseline scores a token by the cosine of its whitened form to the centroids."""
    root, _, _ = trained
    readout = ultra.load(root / "run" / "model.safetensors").readouts["raw_whitened"]
    tokens = torch.randn(5, 48)
    whitened = F.normalize(tokens @ readout.token_map.weight.T + readout.token_map.bias, dim=-1)
    assert torch.allclose(readout(tokens), whitened @ readout.centroids.T, atol=1e-5)
    plain = F.normalize(tokens, dim=-1) @ readout.centroids.T
    assert not torch.allclose(readout(tokens), plain, atol=1e-3)


def test_loaded_checkpoint_segments_images_at_their_size(trained, tiny_vit):
    root, _, _ = trained
    segmenter = ultra.load(root / "run" / "model.safetensors")
    image = SyntheticScenes(1, 96, 4, seed=5)[0]["image"]
    picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((70, 50))
    labels = segmenter.segment(picture)
    assert labels.shape == (50, 70)
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}
    assert torch.equal(segmenter.segment(torch.from_numpy(np.array(picture)).permute(2, 0, 1)), labels)
    raw = segmenter.segment(picture, readout="raw")
    assert raw.shape == (50, 70)
    small = torch.rand(1, 3, 32, 48)  # one readout's scores are those of all readouts, computed alone
    alone = segmenter.pixel_scores(small, readouts=["raw"])
    assert list(alone) == ["raw"] and torch.allclose(alone["raw"], segmenter.pixel_scores(small)["raw"], atol=1e-6)
    with pytest.raises(ConfigError, match="no readout 'nope'"):
        segmenter.segment(picture, readout="nope")
    with pytest.raises(
        ConfigError,
        match=rf"the image is 3000x10 px: at a shorter side of {segmenter.resize} px its longer "
        r"side would be \d+ px, more than the maximum 2048",
    ):
        segmenter.segment(torch.rand(3, 10, 3000))


def test_eval_command_reproduces_the_training_report(trained):
    root, config, report = trained
    again = eval_cli.run(
        [
            "--checkpoint",
            str(root / "run" / "model.safetensors"),
            "--config",
            str(config),
            "--resize",
            "64",
            "--crop",
            "64",
            "--output",
            str(root / "eval2"),
        ]
    )
    for name in ("head", "raw", "raw_centred", "raw_whitened", "probe"):
        assert again["readouts"][name]["miou"] == pytest.approx(report["readouts"][name]["miou"])
    assert again["best_baseline"] == report["best_baseline"]
    assert (root / "eval2" / "eval.json").is_file()


def test_eval_reports_are_guarded_named_by_data_set_and_say_what_was_evaluated(trained, tmp_path):
    root, config, _ = trained
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--resize", "64", "--crop", "64"]
    sets = [
        {
            "class_path": "ultra.data.SyntheticScenes",
            "init_args": {"num_images": 2, "size": 96, "num_classes": 4, "seed": s},
        }
        for s in (5, 6)
    ]
    reports = [eval_cli.run(args + ["--dataset", json.dumps(d)]) for d in sets]
    folders = sorted((root / "run").glob("eval-SyntheticScenes-*"))
    assert len(folders) == 2  # one folder per data set
    assert reports[0]["settings"]["dataset"]["init_args"]["seed"] == 5
    assert (
        json.loads((folders[0] / "eval.json").read_text())["settings"]["dataset"]["class_path"]
        == "ultra.data.synthetic.SyntheticScenes"
    )
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        eval_cli.run(args + ["--dataset", json.dumps(sets[0])])
    again = eval_cli.run(args + ["--dataset", json.dumps(sets[0]), "--overwrite"])
    assert again["readouts"] == reports[0]["readouts"]
    # the data set's class by its short name, its arguments as options: the same images, the same report
    by_name = eval_cli.run(
        args
        + [
            "--dataset",
            "SyntheticScenes",
            "--dataset.num_images",
            "2",
            "--dataset.size",
            "96",
            "--dataset.num_classes",
            "4",
            "--dataset.seed",
            "5",
            "--overwrite",
        ]
    )
    assert by_name["readouts"] == reports[0]["readouts"]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(PermissionError, match="cannot write to the output folder .*file/x"):
        eval_cli.run(args + ["--dataset", json.dumps(sets[0]), "--output", str(not_a_folder / "x")])


def test_segment_command_writes_pictures_and_refuses_to_overwrite(trained, tmp_path):
    root, _, _ = trained
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.fromarray(SyntheticScenes(2, 96, 4, seed=9)[i]["image"].permute(1, 2, 0).numpy()).save(
            images / f"p{i}.jpg"
        )
    written = segment_cli.run([str(root / "run" / "model.safetensors"), str(images), "-o", str(tmp_path / "out")])
    assert [p.name for p in written] == ["p0.png", "p1.png"]
    label = np.array(Image.open(written[0]))
    assert label.shape == (96, 96) and label.dtype == np.uint8
    assert (tmp_path / "out" / "p0_overlay.png").is_file()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        segment_cli.run([str(root / "run" / "model.safetensors"), str(images), "-o", str(tmp_path / "out")])
    segment_cli.run(
        [str(root / "run" / "model.safetensors"), str(images / "p1.jpg"), "-o", str(tmp_path / "out"), "--overwrite"]
    )


def test_segment_never_writes_over_inputs_and_survives_bad_images(trained, tmp_path):
    root, _, _ = trained
    checkpoint = str(root / "run" / "model.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    picture = SyntheticScenes(1, 96, 4, seed=9)[0]["image"].permute(1, 2, 0).numpy()
    Image.fromarray(picture).save(photos / "a.png")
    before = (photos / "a.png").read_bytes()
    with pytest.raises(DataError, match=r"output .*a.png is the input .*a.png; choose another output"):
        segment_cli.run([checkpoint, str(photos), "-o", str(photos), "--overwrite"])
    assert (photos / "a.png").read_bytes() == before
    Image.fromarray(picture).save(photos / "a.jpg")
    with pytest.raises(DataError, match=r"a.jpg and .*a.png would both write .*out/a.png"):
        segment_cli.run([checkpoint, str(photos), "-o", str(tmp_path / "out")])
    (photos / "a.jpg").unlink()
    Image.fromarray(picture).save(photos / "a_overlay.png")  # its labels would replace a's overlay
    with pytest.raises(DataError, match=r"a.png and .*a_overlay.png would both write .*out/a_overlay.png"):
        segment_cli.run([checkpoint, str(photos), "-o", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    (photos / "a_overlay.png").unlink()
    Image.fromarray(picture).save(photos / "b.png")
    (photos / "c.png").write_bytes(b"not a picture")
    Image.fromarray(np.zeros((20, 2000, 3), np.uint8)).save(photos / "d.png")  # 32000 px wide at 320
    with pytest.raises(DataError, match="2 of 4 images could not be segmented"):
        segment_cli.run([checkpoint, str(photos), "-o", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").glob("?.png")) == ["a.png", "b.png"]
    (photos / "c.png").unlink()
    (photos / "d.png").unlink()
    Image.fromarray(picture).save(photos / "e.png")
    written = segment_cli.run([checkpoint, str(photos), "-o", str(tmp_path / "out"), "--skip_existing"])
    assert [p.name for p in written] == ["e.png"]  # a and b were done: a killed batch resumes
    (tmp_path / "out" / "b.png").unlink()  # killed between b's overlay and its label map: b is not done
    written = segment_cli.run([checkpoint, str(photos), "-o", str(tmp_path / "out"), "--skip_existing"])
    assert [p.name for p in written] == ["b.png"] and (tmp_path / "out" / "b_overlay.png").is_file()


def test_console_entry_reports_user_errors_without_a_traceback(trained, tmp_path, capsys):
    root, _, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        segment_cli.main(
            [str(root / "run" / "model.safetensors"), str(tmp_path / "missing"), "-o", str(tmp_path / "o")]
        )
    assert exit_info.value.code == 2
    assert "ultra-segment: error:" in capsys.readouterr().err


def test_bad_checkpoints_are_clear_errors(trained, tmp_path):
    root, _, _ = trained
    good = (root / "run" / "model.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors is not a readable safetensors file"):
        ultra.load(tmp_path / "truncated.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an ultra inference checkpoint"):
        ultra.load(tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "listed.safetensors"), metadata={"ultra": "[1, 2]"})
    with pytest.raises(CheckpointError, match="listed.safetensors: its 'ultra' header is a JSON list, not an object"):
        ultra.load(tmp_path / "listed.safetensors")
    with pytest.raises(CheckpointError, match="last.ckpt is not a readable safetensors"):
        ultra.load(root / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        ultra.load(tmp_path / "nothing.safetensors")


def _crafted(path, source, edit_meta=None, edit_tensors=None):
    """A copy of the checkpoint ``source`` with its header or tensors changed."""
    from safetensors.torch import save_file

    meta, tensors = read_checkpoint(source)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(path), metadata={"ultra": json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    "edit_meta, edit_tensors, message",
    [
        (
            lambda m: m["backbone"]["model_kwargs"].update(checkpoint_path="x.pt"),
            None,
            "model_kwargs 'checkpoint_path' is not allowed",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(num_heads=0),
            None,
            r"model_kwargs 'num_heads' must be an integer in \[1, 128\], got 0",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(patch_size=0),
            None,
            r"model_kwargs 'patch_size' must be an integer in \[1, 64\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(embed_dim=65536),
            None,
            r"model_kwargs 'embed_dim' must be an integer in \[1, 8192\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(depth=65536),
            None,
            r"model_kwargs 'depth' must be an integer in \[1, 64\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(mlp_ratio=-1),
            None,
            r"model_kwargs 'mlp_ratio' must be a number in \(0, 16\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(mlp_ratio=1e9),
            None,
            r"model_kwargs 'mlp_ratio' must be a number in \(0, 16\]",
        ),
        (
            lambda m: m["backbone"]["model_kwargs"].update(num_heads=5),
            None,
            r"model_kwargs embed_dim 48 is not a multiple of num_heads 5",
        ),
        (
            lambda m: m["backbone"]["weights"].pop("digest"),
            None,
            r"backbone.weights must give its source, location and digest",
        ),
        (
            lambda m: m["backbone"].update(model="vit_no_such_model"),
            None,
            r"backbone.model 'vit_no_such_model' is not a timm model",
        ),
        (
            lambda m: m["backbone"].update(model="vit_tiny_patch16_224.no_such_tag"),
            None,
            r"backbone.model 'vit_tiny_patch16_224.no_such_tag' is not a timm model \(unknown tag 'no_such_tag'",
        ),
        (lambda m: m.update(cluster_to_class=[0, 1]), None, r"cluster_to_class must be a mapping of readout names"),
        (lambda m: m.update(cluster_to_class="head"), None, r"cluster_to_class must be a mapping of readout names"),
        (lambda m: m.update(classes=["a", "a", "b", "c"]), None, r"classes must be distinct names"),
        (
            lambda m: m["backbone"]["model_kwargs"].update(qkv_bias="yes"),
            None,
            r"model_kwargs 'qkv_bias' must be true or false",
        ),
        (
            None,
            lambda t: t.update({"raw_whitened.centroids": torch.zeros(4, 8)}),
            r"raw_whitened.centroids are 8-d, the token map gives 48-d tokens",
        ),
        (
            lambda m: m["readouts"]["head"]["head"].update(out_dim=10**9),
            None,
            r"readouts.head.head.out_dim must be an integer",
        ),
        (
            None,
            lambda t: t.update({"head.head.net.weight": torch.zeros(3, 3)}),
            r"tensor 'head.head.net.weight' is \(3, 3\)",
        ),
        (None, lambda t: t.pop("raw.centroids"), "tensor 'raw.centroids' is missing"),
        (
            None,
            lambda t: t["head.centroids"].__setitem__((1, 2), float("nan")),
            r"tensor 'head.centroids' holds NaN or infinite values",
        ),
        (
            None,
            lambda t: t["raw_whitened.token_map.bias"].__setitem__(0, float("inf")),
            r"tensor 'raw_whitened.token_map.bias' holds NaN",
        ),
        (
            None,
            lambda t: t.update({"raw.centroids": torch.zeros(256, 48)}),
            r"tensor 'raw.centroids' .* matrix of 1 to 255 clusters",
        ),
        (
            lambda m: m["readouts"]["raw_whitened"].update(token_map={"dim": 7}),
            None,
            r"tensor 'raw_whitened.token_map.weight' is \(48, 48\)",
        ),
        (
            lambda m: m["readouts"]["raw_whitened"].update(token_map={"dim": "x"}),
            None,
            r"readouts.raw_whitened.token_map.dim must be an integer",
        ),
        (
            lambda m: m["readouts"]["raw_whitened"].pop("token_map"),
            None,
            r"tensors \['raw_whitened.token_map.bias', 'raw_whitened.token_map.weight'\] belong to no readout",
        ),
        (
            lambda m: m["cluster_to_class"].update(head=[99] * 4),
            None,
            "cluster_to_class.head must give each of the 4 clusters",
        ),
        (lambda m: m["cluster_to_class"].update(head=[0]), None, "cluster_to_class.head must give each"),
        (
            lambda m: m.update(classes=m["classes"][:2]),
            None,
            r"cluster_to_class.head must give each of the 4 clusters a class in \[0, 1\]",
        ),
        (lambda m: m.update(resize=0), None, r"resize must be an integer in \[1, 4096\]"),
        (lambda m: m["readouts"]["head"].update(keys=[["z", 1]]), None, "readouts.head.keys must be a list of"),
        (None, lambda t: t.update({"stray": torch.zeros(1)}), r"tensors \['stray'\] belong to no readout"),
        # checked against the backbone once it is built (one check for every kind of readout)
        (
            lambda m: m["readouts"]["head"].update(keys=[["x", 99]]),
            None,
            r"readouts.head.keys name layers \[99\], .* has 3 blocks",
        ),
        (
            lambda m: m["readouts"]["raw"].update(keys=[["x", 2], ["x", 1]]),
            None,
            r"readouts.raw expects 48-d tokens, .* gives 96-d",
        ),
        (
            lambda m: m["readouts"]["head"].update(keys=[["x", 2], ["x", 1]]),
            None,
            r"readouts.head expects 48-d tokens, .* gives 96-d",
        ),
        (
            lambda m: m["readouts"]["probe"].update(keys=[["x", 2], ["x", 1]]),
            None,
            r"readouts.probe expects 48-d tokens",
        ),
    ],
)
def test_crafted_checkpoint_headers_are_refused_naming_the_field(trained, tmp_path, edit_meta, edit_tensors, message):
    root, _, _ = trained
    path = _crafted(tmp_path / "crafted.safetensors", root / "run" / "model.safetensors", edit_meta, edit_tensors)
    with pytest.raises(CheckpointError, match=rf"crafted.safetensors: {message}"):
        ultra.load(path)


def test_a_checkpoint_for_other_backbone_weights_is_refused(tmp_path):
    from safetensors.torch import save_file

    from ultra.backbone.vit import FrozenViT
    from ultra.readout.checkpoint import save_segmenter
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    state = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    save_file({k: v.contiguous() + 0.01 for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    backbone = FrozenViT("vit_tiny_patch16_224", weights=tmp_path / "a.safetensors", model_kwargs=TINY_VIT)
    segmenter = Segmenter(
        backbone, {"head": ClusterReadout([("x", 2)], torch.randn(3, 8), ProjectionHead(48, 8))}, ["a", "b", "c"]
    )
    save_segmenter(segmenter, tmp_path / "m.safetensors")
    assert ultra.load(tmp_path / "m.safetensors").backbone.weights_info.source == "file"
    with pytest.raises(
        CheckpointError,
        match=r"was trained on vit_tiny_patch16_224 with weights file:.*a.safetensors.*loaded file:.*b.safetensors",
    ):
        ultra.load(tmp_path / "m.safetensors", weights=tmp_path / "b.safetensors")
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file .*a.safetensors, which is missing"):
        ultra.load(tmp_path / "m.safetensors")


def _without_crf(monkeypatch):
    def missing():
        raise CRFUnavailable("no pydensecrf")

    monkeypatch.setattr(crf, "_densecrf", missing)


def test_eval_and_segment_refuse_crf_without_the_package(trained, tmp_path, monkeypatch):
    root, config, _ = trained
    _without_crf(monkeypatch)
    checkpoint = str(root / "run" / "model.safetensors")
    with pytest.raises(CRFUnavailable, match=r"--crf needs the dense CRF: pip install 'ultra-seg\[crf\]'"):
        eval_cli.run(["--checkpoint", checkpoint, "--config", str(config), "--crf", "--output", str(tmp_path / "e")])
    picture = tmp_path / "p.jpg"
    Image.fromarray(SyntheticScenes(1, 64, 4, seed=3)[0]["image"].permute(1, 2, 0).numpy()).save(picture)
    with pytest.raises(CRFUnavailable, match=r"--crf needs the dense CRF"):
        segment_cli.run([checkpoint, str(picture), "-o", str(tmp_path / "s"), "--crf"])
    assert not (tmp_path / "e").exists() and not (tmp_path / "s").exists()


def test_crf_requested_without_the_package_fails_before_training(tmp_path, monkeypatch):
    _without_crf(monkeypatch)
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(CRFUnavailable, match="pip install 'ultra-seg\\[crf\\]'"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--readout.crf", "true"])
    assert not (tmp_path / "run" / "checkpoints").exists()


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
    spec = [GraphSpec("feat", 2)]
    plain = load_or_build_operators(cache, spec, KnnConfig(k_any=5, candidate_images=None), False).graphs[0]
    white = load_or_build_operators(
        cache, spec, KnnConfig(k_any=5, candidate_images=None, space="whitened"), False
    ).graphs[0]
    expected = knn_graph(search_tokens(cache, ("x", 2), "whitened"), config=KnnConfig(k_any=5, candidate_images=None))
    assert torch.equal(white.indices, expected.indices) and not torch.equal(white.indices, plain.indices)


def test_data_settings_refuse_bad_values_naming_the_option(tmp_path, tiny_vit):
    from ultra.data.transforms import ViewConfig
    from ultra.errors import CacheError
    from ultra.graphs.store import search_tokens
    from ultra.head.datamodule import HeadDataModule

    with pytest.raises(ConfigError, match="data.views.scheme must be one of"):
        ViewConfig(scheme="six")
    with pytest.raises(ConfigError, match=r"data.views: .*crop_fraction in \(0, 1\], got 224, 320, 0"):
        ViewConfig(crop_fraction=0)
    with pytest.raises(ConfigError, match="knn.space must be one of .*got 'pca'"):
        KnnConfig(space="pca")
    tiny = dict(
        train_dataset=SyntheticScenes(2, 96, 4),
        backbone="vit_tiny_patch16_224",
        weights="random",
        model_kwargs=TINY_VIT,
    )
    with pytest.raises(ConfigError, match="data.tokens must be one of"):
        HeadDataModule(**tiny, tokens="z")
    with pytest.raises(ConfigError, match="data.views.size=70 is not a multiple of the patch size 16"):
        _ = HeadDataModule(**tiny, views=ViewConfig(size=70)).backbone  # checked when the backbone is first built
    cache = FeatureCache.open_or_build(
        SyntheticScenes(2, 96, 4), tiny_vit, [("x", 2)], FiveCropViews(64, 96), tmp_path, progress=False
    )
    (cache.path / "graphs").mkdir(exist_ok=True)
    np.save(cache.path / "graphs" / "whitened-x2.npy", np.zeros((3, 48), np.float16))  # a stale file of another size
    with pytest.raises(CacheError, match=r"whitened-x2.npy holds \(3, 48\) tokens, .* expected: delete it"):
        search_tokens(cache, ("x", 2), "whitened")


def test_eval_command_refuses_what_it_cannot_evaluate(trained, tmp_path):
    root, _, _ = trained
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--output", str(tmp_path / "e")]
    with pytest.raises(ConfigError, match="give --dataset, or a --config whose data section has a val_dataset"):
        eval_cli.run(args)
    (tmp_path / "broken.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml is not a readable YAML file"):
        eval_cli.run(args + ["--config", str(tmp_path / "broken.yaml")])
    (tmp_path / "nodata.yaml").write_text("model: {out_dim: 8}\n")
    with pytest.raises(ConfigError, match="nodata.yaml has no data section"):
        eval_cli.run(args + ["--config", str(tmp_path / "nodata.yaml")])
    three = {"class_path": "ultra.data.SyntheticScenes", "init_args": {"num_images": 2, "size": 96, "num_classes": 3}}
    with pytest.raises(
        ConfigError,
        match=r"the data set's classes are not the checkpoint's: 3 vs 4 classes, first "
        r"difference at id 1 \('thing_1' here, 'stuff_1' in the checkpoint\)",
    ):
        eval_cli.run(args + ["--dataset", json.dumps(three)])


def _png_claiming(path, width: int, height: int) -> None:
    """A small PNG whose header (IHDR) claims ``width x height`` pixels."""
    import struct
    import zlib

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_segment_refuses_a_decompression_bomb_by_name_and_goes_on(trained, tmp_path):
    root, _, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    _png_claiming(photos / "a_bomb.png", 40000, 40000)
    Image.fromarray(SyntheticScenes(1, 96, 4, seed=3)[0]["image"].permute(1, 2, 0).numpy()).save(photos / "b.png")
    with pytest.raises(DataError, match=r"1 of 2 images could not be segmented \(first: .*a_bomb.png\)"):
        segment_cli.run([str(root / "run" / "model.safetensors"), str(photos), "-o", str(tmp_path / "out")])
    assert (tmp_path / "out" / "b.png").is_file() and not (tmp_path / "out" / "a_bomb.png").exists()
    from ultra.data.io import read_image

    with pytest.raises(DataError, match=r"image .*a_bomb.png is refused: .*1600000000 pixels"):
        read_image(photos / "a_bomb.png")


def test_a_photo_is_segmented_as_its_exif_orientation_shows_it(trained, tmp_path):
    """A photo stored 100 x 80 with EXIF orientation 6 (turned 90 degrees) is shown 80 wide, 100 high."""
    root, _, _ = trained
    stored = SyntheticScenes(1, 96, 4, seed=4)[0]["image"].permute(1, 2, 0).numpy()[:80]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored[:, :96])).resize((100, 80)).save(tmp_path / "turned.jpg", exif=exif)
    written = segment_cli.run(
        [str(root / "run" / "model.safetensors"), str(tmp_path / "turned.jpg"), "-o", str(tmp_path / "out")]
    )
    assert np.array(Image.open(written[0])).shape == (100, 80)
    assert Image.open(tmp_path / "out" / "turned_overlay.png").size == (80, 100)
