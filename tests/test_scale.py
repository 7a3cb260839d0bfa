"""The scale benchmark's synthetic caches are real caches with real-looking tokens, and the benchmark runs end to end."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ultra.features import FeatureCache
from ultra.nodes import build_view_operator

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


def test_a_stage_reports_its_fastest_run_and_largest_memory_and_reruns_only_when_short(monkeypatch):
    bench = _bench()
    calls = []
    short = bench.repeat(lambda: calls.append(1))
    assert len(calls) == bench.REPEATS and short["runs"] == bench.REPEATS
    monkeypatch.setattr(bench, "SHORT_S", 0.0)  # every run counts as long: one run per sweep
    assert bench.repeat(lambda: calls.append(1))["runs"] == 1 and len(calls) == bench.REPEATS + 1
    runs = [{"seconds": 3.0, "private_mb": 10.0, "mapped_mb": 1.0, "runs": 1, "faults": 7, "reference_ms": [12.0]},
            {"seconds": 2.0, "private_mb": 5.0, "mapped_mb": 4.0, "runs": 1, "faults": 0, "reference_ms": [15.0]}]
    row = {"nodes": 1}
    for run in runs:
        bench._record(row, {"graph": dict(run)}, 1, 0.0)
    assert row["graph"] == {"seconds": 2.0, "private_mb": 10.0, "mapped_mb": 4.0, "runs": 2, "faults": 0,
                            "reference_ms": [12.0, 15.0]}


@pytest.mark.slow
def test_scale_benchmark_runs_and_ends_with_its_summary_line(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--sizes", "2", "--start-images", "3", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"scale: max time ratio per doubling ([\d.]+) \((\w+)\), max memory ratio ([\d.]+) \((\w+)\); "
                         r"node batch at N=63,525,120: ([\d.]+) ms", last)
    assert match, last
    assert float(match.group(5)) < 50  # the draw of a node batch among 63.5M nodes
    assert "COCO-Stuff-27" in out.stdout and "projection" in out.stdout
    assert not any(tmp_path.iterdir())  # the synthetic caches are removed
