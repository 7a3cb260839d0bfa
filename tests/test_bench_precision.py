"""The precision benchmark runs end to end (random weights, random images) and its figures say what they should."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_precision_bench_times_both_arithmetics_and_compares_their_tokens(capsys):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("precision_bench", BENCH / "precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(["--batch", "2", "--size", "56", "--repeats", "1", "--random", "--weights", "random"])
    assert set(figures["seconds"]) == {"timm fp32 forward_features", "FrozenViT fp32", "FrozenViT bf16"}
    assert all(seconds > 0 for seconds in figures["seconds"].values())
    assert 0.99 < figures["cosine_min"] <= figures["cosine_mean"] <= 1.0
    assert 0.5 < figures["knn_overlap"] <= 1.0
    assert "auto = " in capsys.readouterr().out
