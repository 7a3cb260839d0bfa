"""The interpretation benchmarks (what / where per layer; selection and segmentation from maps) run end to end on a
tiny synthetic folder with random weights, so that they cannot rot."""

import importlib
import json
import sys

import pytest
from helpers import REPO

from ultra.data import write_synthetic_folder


def _bench(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_synthetic_folder(tmp_path_factory.mktemp("scenes"), num_images=3, size=112, num_classes=3)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    return root


def test_whatwhere_measures_each_kind_and_level_per_layer_and_reuses_a_finished_set(folder, tmp_path, capsys):
    whatwhere = _bench("whatwhere")
    args = dict(sets=str(folder), size=112, seeds="0,1", output=tmp_path, weights="random", layers=[2, 11])
    figures = whatwhere.main(**args)
    layers = figures["sets"][str(folder)]["layers"]
    assert list(layers) == [2, 11] and set(layers[2]) == set(whatwhere.KINDS)
    for row in (layers[layer][kind] for layer in layers for kind in whatwhere.KINDS):
        assert 0 <= row["image"]["position_r2"] <= 1 and 0 <= row["dataset"]["class_r2_mean"] <= 1
        assert row["dataset"]["position_r2_std"] >= 0
    assert (tmp_path / "whatwhere.png").stat().st_size > 10_000 and (tmp_path / f"{folder.name}.json").is_file()
    capsys.readouterr()
    again = whatwhere.main(**args)
    assert again["sets"] == json.loads(json.dumps(figures["sets"])) and "layer" not in capsys.readouterr().out


def test_interpret_scores_every_selection_method_and_the_segmentations(folder, tmp_path, tiny_checkpoint):
    interpret = _bench("interpret")
    figures = interpret.main(
        sets=str(folder),
        size=112,
        seeds="0",
        segment_images=1,
        output=tmp_path,
        weights="random",
        checkpoints={str(folder): str(tiny_checkpoint)},
    )
    result = figures["sets"][str(folder)]
    assert result["clicks"] >= 3 and set(result["selection_iou"]) == set(interpret.METHODS)
    assert all(0 < iou <= 1 for iou in result["selection_iou"].values())
    segmentation = result["segmentation"]
    assert segmentation["images"] == 1 and 0 < segmentation["maps_miou"] <= 1
    assert segmentation["raw_kmeans_miou_std"] is None  # one seed: no standard deviation
    assert len(list((tmp_path / "maps").rglob("*.pt"))) == 3  # the maps are cached per image


def test_interpret_reads_a_subset_of_the_cached_maps_without_computing_or_dropping_any(folder, tmp_path, monkeypatch):
    from ultra.analysis import relevance

    interpret = _bench("interpret")
    args = dict(sets=str(folder), size=112, seeds="0", output=tmp_path, weights="random", methods="relevance+region")
    first = interpret.main(**args, segment_images=1)["sets"][str(folder)]
    cached = {path: path.read_bytes() for path in (tmp_path / "maps").rglob("*.pt")}

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached map was computed again")

    monkeypatch.setattr(relevance, "relevance_maps", forbidden)
    again = interpret.main(**args, segment_images=0)["sets"][str(folder)]  # the clicks' maps only
    assert again["selection_iou"] == first["selection_iou"]
    assert {path: path.read_bytes() for path in cached} == cached  # the anchors' maps are still there


def test_interpret_cost_prints_the_selections_and_the_maps_in_forwards(capsys):
    figures = _bench("interpret_cost").main(size=56, stride=2, weights="random")
    ratios = {"select_similarity_ratio", "select_relevance_ratio", "all_ratio", "anchor_ratio"}
    assert set(figures) == {"forward_s", *ratios}
    assert figures["all_ratio"] > figures["anchor_ratio"] > 0 and figures["select_similarity_ratio"] > 0
    assert "select by similarity" in capsys.readouterr().out


def test_interpret_skips_an_image_without_a_click_and_says_so(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root = write_synthetic_folder(tmp_path / "scenes", num_images=2, size=112, num_classes=3)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    unlabelled = sorted((root / "labels").iterdir())[0]
    Image.fromarray(np.full((112, 112), 255, np.uint8)).save(unlabelled)
    figures = _bench("interpret").main(
        sets=str(root), size=112, seeds="0", segment_images=0, output=tmp_path / "out", weights="random"
    )
    assert "no click (no labelled region above the floor), skipped" in capsys.readouterr().out
    assert figures["sets"][str(root)]["clicks"] >= 1


def test_whatwhere_writes_standard_json_with_null_for_a_non_finite_figure():
    whatwhere = _bench("whatwhere")
    text = whatwhere.strict_json({"r2": float("nan"), "rows": [1.0, float("inf")], "ok": 0.5})
    assert json.loads(text) == {"r2": None, "rows": [1.0, None], "ok": 0.5} and "NaN" not in text
