"""The prepared device check runs end to end on the CPU (bfloat16 against float32 stands in for the device), and its
agreement figures say what they should: close, not identical, and far from chance."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_device_check_compares_every_stage_and_times_them(tmp_path, capsys):
    figures = _bench().main(
        ["--device", "cpu", "--precision", "bf16", "--small", "--graph-tokens", "10000", "--out", str(tmp_path)]
    )
    assert figures["precision"] == "bf16"
    (tokens,) = figures["tokens"].values()
    assert 0.99 < tokens["min"] <= tokens["mean"] <= 1.0
    (graph,) = figures["graphs"].values()
    assert 0.8 < graph["edges_jaccard"] <= 1.0
    assert figures["head"]["subspace_cosine_min"] > 0.9
    assert set(figures["readouts"]) >= {"head", "raw", "probe", "oracle"}
    for sides in figures["readouts"].values():
        assert abs(sides["cpu"]["miou"] - sides["device"]["miou"]) < 0.1
    assert figures["segment"]["same_checkpoint_pixels_agree"] > 0.95
    for side in ("cpu", "device"):
        assert {"cache_s", "graphs_s", "fit_s", "readouts_s", "wall_s"} <= set(figures["timings"][side])
        assert figures["timings"][side]["cache_s"] > 0.01  # built cold, not found
    assert figures["graph_at_scale"]["tokens"] >= 10000 and figures["graph_at_scale"]["seconds"] > 0
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == figures
    assert "segment | same checkpoint" in capsys.readouterr().out
