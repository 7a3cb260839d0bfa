"""The what / where analysis of a folder: its figures detect what they should, its pictures and JSON, its refusals."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY_VIT, save_png
from PIL import Image

from ultra.analysis.solver import SolverConfig
from ultra.analysis.whatwhere import class_r2, position_r2
from ultra.cli.analyze import analyze, main
from ultra.data import DataError, write_synthetic_folder
from ultra.data.grids import grid_positions, labels_to_grid
from ultra.graphs.knn import KnnConfig

TINY = dict(
    backbone="vit_tiny_patch16_224",
    weights="random",
    size=64,
    solver=SolverConfig(num_vectors=5, epochs=30),
    knn=KnnConfig(k_intra=4, k_inter=4, k_any=0, candidate_images=None),
)


@pytest.fixture(autouse=True)
def _tiny_backbone(monkeypatch):
    """The analysis builds its own backbone: make it the tiny 3-block model."""
    import ultra.analysis.pipeline as module
    from ultra.backbone.vit import FrozenViT

    monkeypatch.setattr(
        module,
        "FrozenViT",
        lambda name, weights, layers, precision: FrozenViT(
            name, weights, layers, model_kwargs=TINY_VIT, precision=precision
        ),
    )


def test_position_and_class_r2_detect_what_they_should():
    grid = (6, 8)
    pos = grid_positions(grid)
    smooth = (pos[:, 0] * 2 + pos[:, 1] ** 2)[None, :, None]  # a function of position only
    assert position_r2(smooth.repeat(3, 1, 1), grid).item() > 0.999
    classes = torch.randint(0, 3, (3, 48))
    indicator = (classes == 1).double()[..., None]
    assert class_r2(indicator, classes, 3).item() > 0.999
    noise = torch.randn(3, 48, 1, generator=torch.Generator().manual_seed(0))
    assert position_r2(noise, grid).item() < 0.5 and class_r2(noise, classes, 3).item() < 0.3


def test_labels_to_grid_takes_the_majority_and_ignores_void():
    labels = torch.full((8, 8), 255)
    labels[:4, :4] = 1
    labels[:4, 4:] = 2
    labels[4:6, :4] = 0
    grid = labels_to_grid(labels, (2, 2), num_classes=3)
    assert grid.tolist() == [[1, 2], [0, 255]]


def test_analysis_writes_pictures_and_figures(tmp_path):
    write_synthetic_folder(tmp_path / "data", 3, 64, 4, seed=0)
    figures = analyze(tmp_path / "data", tmp_path / "out", classes=4, graph_kinds=["kq", "vv"], **TINY)
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert saved["settings"]["layers"] == [0, 1, 2] and saved["settings"]["grid"] == [4, 4]
    for kind in ("kq", "vv"):
        for level in ("image", "dataset"):
            stats = saved[kind][level]
            assert set(stats) == {"position_r2", "class_r2", "miou", "acc"}
    assert figures["kq"]["dataset"] == saved["kq"]["dataset"]
    again = analyze(tmp_path / "data", tmp_path / "again", classes=4, graph_kinds=["kq", "vv"], **TINY)
    assert {k: again[k] for k in ("kq", "vv")} == {k: figures[k] for k in ("kq", "vv")}  # seeded: the same figures
    other_seed = analyze(
        tmp_path / "data",
        tmp_path / "seed1",
        classes=4,
        graph_kinds=["kq"],
        **{**TINY, "solver": SolverConfig(num_vectors=5, epochs=30, seed=1)},
    )
    assert other_seed["kq"] != figures["kq"]  # and the seed reaches the solver and k-means
    sheets = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(sheets) == 3
    assert Image.open(tmp_path / "out" / sheets[0]).size[0] > 500


def test_analysis_without_labels_and_through_the_console_entry(tmp_path, capsys):
    for i in range(2):
        save_png(
            tmp_path / "flat" / f"p{i}.png", np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8)
        )
    main(
        [
            str(tmp_path / "flat"),
            "-o",
            str(tmp_path / "out"),
            "--graph_kinds",
            "[xx]",
            "--backbone",
            "vit_tiny_patch16_224",
            "--weights",
            "random",
            "--size",
            "64",
            "--solver.num_vectors",
            "4",
            "--solver.epochs",
            "10",
            "--knn.k_intra",
            "3",
            "--knn.k_inter",
            "3",
            "--clusters",
            "3",
        ]
    )
    assert "xx     dataset" in capsys.readouterr().out
    stats = json.loads((tmp_path / "out" / "analysis.json").read_text())["xx"]["dataset"]
    assert set(stats) == {"position_r2"}


def test_analysis_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        analyze(tmp_path / "empty", tmp_path / "o1", **TINY)
    save_png(tmp_path / "tiny" / "a.png", np.zeros((10, 40, 3), np.uint8))
    with pytest.raises(DataError, match="a.png is 40x10 px, smaller than one 16x16 patch"):
        analyze(tmp_path / "tiny", tmp_path / "o2", **TINY)
    write_synthetic_folder(tmp_path / "data", 2, 64, 4)
    with pytest.raises(ValueError, match="num_vectors 16 must be smaller than the 16 tokens"):
        analyze(tmp_path / "data", tmp_path / "o3", classes=4, **{**TINY, "solver": SolverConfig(num_vectors=16)})
    with pytest.raises(ValueError, match="k_intra=20 exceeds the 15 other tokens"):
        analyze(
            tmp_path / "data",
            tmp_path / "o4",
            classes=4,
            **{**TINY, "knn": KnnConfig(k_intra=20, k_inter=4, k_any=0, candidate_images=None)},
        )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy is not empty"):
        analyze(tmp_path / "data", tmp_path / "busy", classes=4, **TINY)
    with pytest.raises(ValueError, match="graph kind must be among"):
        analyze(tmp_path / "data", tmp_path / "o5", graph_kinds=["qq"], **TINY)


def test_analysis_never_writes_over_its_images_or_labels(tmp_path):
    write_synthetic_folder(tmp_path / "data", 2, 64, 4)
    before = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*.png")}
    for folder in ("images", "labels"):
        with pytest.raises(DataError, match=rf"output .*data/{folder}/(\w+).png is the input .*data/{folder}/\1.png"):
            analyze(tmp_path / "data", tmp_path / "data" / folder, classes=4, overwrite=True, **TINY)
    assert {p: p.read_bytes() for p in (tmp_path / "data").rglob("*.png")} == before
