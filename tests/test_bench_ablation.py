"""The ablation benchmark and its levers run end to end on one synthetic set and one seed (so that they cannot rot)."""

import importlib
import sys

from helpers import REPO, synthetic_config, tiny_overrides

from ultra.backbone.vit import FrozenViT


def _ablation():
    sys.path.insert(0, str(REPO / "bench"))  # the ablation imports its levers from its own folder
    try:
        return importlib.import_module("ablation")
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_the_ablation_scores_options_levers_and_baselines_on_one_set(tmp_path, capsys):
    ablation = _ablation()
    config = synthetic_config(tmp_path / "tiny.yaml", train_images=4, val_images=3)
    overrides = " ".join(f"'{a}'" for a in tiny_overrides(tmp_path, epochs=1))
    options = ["default", "view0", "self_train2", "grid_feature_edges", "second_graph", "self_training_segments"]
    options += ["quotient_weighted4"]
    results = ablation.main(
        [
            "--sets",
            str(config),
            "--options",
            ",".join(options),
            "--seeds",
            "0",
            "--config_args",
            overrides,
            "--output",
            str(tmp_path / "ablation.json"),
        ]
    )
    figures = results["tiny"]
    assert list(figures["options"]) == options and set(figures["raw"]) == set(ablation.RAW_VARIANTS)
    assert set(figures["reference"]) == {"probe", "oracle"}
    for row in [*figures["options"].values(), *figures["raw"].values(), *figures["reference"].values()]:
        for split in ("val", "train"):
            assert 0 < row[split]["miou"]["mean"] <= 1 and row[split]["miou"]["values"] == [row[split]["miou"]["mean"]]
    default = figures["options"]["default"]["train"]["miou"]["mean"]
    # a graph lever solves other forms: its head, and so its figures, are not the default's
    assert figures["options"]["second_graph"]["train"]["miou"]["mean"] != default
    assert (tmp_path / "ablation.json").is_file()
    table = capsys.readouterr().out
    assert all(option in table for option in options) and "oracle" in table and "of the gap closed" in table


def test_a_second_ablation_run_reads_the_evaluation_tokens_back_and_prints_the_same_figures(tmp_path, monkeypatch):
    ablation = _ablation()
    config = synthetic_config(tmp_path / "tiny.yaml", train_images=4, val_images=3)
    args = ["--sets", str(config), "--options", "default", "--seeds", "0"]
    args += ["--config_args", " ".join(f"'{a}'" for a in tiny_overrides(tmp_path, epochs=1))]
    first = ablation.main([*args, "--output", str(tmp_path / "first.json")])["tiny"]
    stored = sorted((ablation.cache_root() / "ablation").glob("eval-tokens-*.pt"))
    assert len(stored) == 2  # the val and the training images

    def no_backbone(*args, **kwargs):
        raise AssertionError("the evaluation tokens were computed again")

    monkeypatch.setattr(FrozenViT, "collect_grids", no_backbone)
    second = ablation.main([*args, "--output", str(tmp_path / "second.json")])["tiny"]
    figures = lambda run: {s: run["options"]["default"][s] for s in ("val", "train")}  # noqa: E731
    assert figures(second) == figures(first) and second["raw"] == first["raw"]
