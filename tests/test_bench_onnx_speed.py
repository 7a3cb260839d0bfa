"""The ONNX speed benchmark runs end to end (the tiny checkpoint, two real photos) and its figures say what they
should."""

import importlib.util
import sys
from pathlib import Path

import pytest
from helpers import realdata

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_onnx_speed_bench_times_every_engine_and_scores_the_float32_file_against_segment(tiny_checkpoint, capsys):
    pytest.importorskip("onnxruntime")
    realdata("camvid")
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("onnx_speed_bench", BENCH / "onnx_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--checkpoint", str(tiny_checkpoint), "--side", "64", "--photos", "2", "--batch", "2", "--repeats", "1"]
    figures = bench.main([*args, "--sets", "camvid"])
    for table in ("one_photo_per_s", "batch_images_per_s"):
        assert set(figures[table]) == {"torch", "none", "int8"} and all(v > 0 for v in figures[table].values())
    assert figures["agreement"]["none"]["lowest"] >= 0.995  # the float32 file is segment()
    assert 0 <= figures["int8_vs_fp32"]["lowest"] <= 1 and figures["file_mb"]["int8"] < figures["file_mb"]["none"]
    assert figures["input_size"] == [64, 80] and figures["batch"] == 2  # CamVid's 360x480 at a shorter side of 64
    assert "onnxruntime float32" in capsys.readouterr().out
