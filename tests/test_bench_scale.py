"""The scale benchmark's synthetic caches are real caches with real-looking tokens, and the benchmark runs end to
end."""

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ultra.data.cache import FeatureCache
from ultra.graphs.store import build_view_operator

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_cache_opens_as_a_feature_cache_with_consistent_views_and_clustered_tokens(tmp_path):
    folder = _bench().write_synthetic_cache(tmp_path / "cache", 6)
    cache = FeatureCache(folder)  # the manifest and every array check out
    assert cache.num_nodes == 6 * 5 * 256 and cache.keys == [("x", 11)] and cache.views_per_image == 5
    nodes = torch.arange(cache.num_nodes)
    labels = cache.node_labels(nodes)
    rows, cols, _ = build_view_operator(cache.geometry, 5, cache.grid).entries(nodes)
    assert rows.numel() > 0 and (labels[rows] == labels[cols]).float().mean() > 0.9  # the crops show one scene
    x = F.normalize(cache.rows([("x", 11)], nodes), dim=-1)
    classes = labels.unique()
    means = F.normalize(torch.stack([x[labels == c].mean(0) for c in classes]), dim=-1)
    assert (classes[(x @ means.T).argmax(1)] == labels).float().mean() > 0.9  # tokens cluster by class
    assert len(classes) >= 3


def test_a_stage_reports_its_fastest_run_or_segments_and_largest_memory():
    bench = _bench()
    calls = []
    assert bench.repeat(lambda: calls.append(1), 3)["runs"] == 3 and len(calls) == 3
    marked = bench.measure(lambda: [time.perf_counter(), time.perf_counter()], marked=True)
    assert len(marked["segments"]) == 3 and sum(marked["segments"]) == pytest.approx(marked["seconds"])
    runs = [
        {"seconds": 3.0, "private_mb": 10.0, "mapped_mb": 1.0, "runs": 1, "faults": 7, "reference_ms": [12.0]},
        {"seconds": 2.0, "private_mb": 5.0, "mapped_mb": 4.0, "runs": 1, "faults": 0, "reference_ms": [15.0]},
    ]
    row = {"nodes": 1}
    for run in runs:
        bench._record(row, {"graph": dict(run)}, 1, 0.0)
    assert row["graph"] == {
        "seconds": 2.0,
        "private_mb": 10.0,
        "mapped_mb": 4.0,
        "runs": 2,
        "faults": 0,
        "reference_ms": [12.0, 15.0],
    }
    # the same work timed in segments: the fastest run of each segment, summed
    segmented = bench.combine([dict(runs[0], segments=[1.0, 2.0]), dict(runs[1], segments=[1.5, 0.5])])
    assert segmented["segments"] == [1.0, 0.5] and segmented["seconds"] == 1.5 and segmented["runs"] == 2


def test_graph_build_marks_its_views_without_changing_the_graph():
    import ultra.graphs.knn as affinity

    bench = _bench()
    tokens = torch.randn(10, 16, 8, generator=torch.Generator().manual_seed(0))
    config = affinity.KnnConfig(k_intra=3, k_inter=2, k_any=0, candidate_images=None)
    marks, on_view = bench.marks_every(3)
    marked = affinity.knn_graph(tokens, config=config, on_view=on_view)
    assert len(marks) == 3 and marks == sorted(marks)  # after views 3, 6 and 9
    plain = affinity.knn_graph(tokens, config=config)
    assert torch.equal(marked.indptr, plain.indptr) and torch.equal(marked.indices, plain.indices)
    assert torch.equal(marked.values, plain.values)
    seen = []
    affinity.knn_graph(tokens, config=config, on_view=seen.append)
    assert seen == list(range(10))  # every view, in order


@pytest.mark.slow
def test_scale_benchmark_runs_and_ends_with_its_summary_line(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "2", "--start-images", "3", "--root", str(tmp_path), "--once"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"scale: max time ratio per doubling ([\d.]+) \((\w+)\), max memory ratio ([\d.]+) \((\w+)\); "
        r"node batch at N=63,525,120: ([\d.]+) ms",
        last,
    )
    assert match, last  # the figures themselves are the bench's to report, not a test's to bound
    assert "COCO-Stuff-27" in out.stdout and "projection" in out.stdout
    assert not any(tmp_path.iterdir())  # the synthetic caches are removed
