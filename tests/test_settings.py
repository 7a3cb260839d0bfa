"""Settings refused on their config classes, naming the option (milliseconds; each command has one test that such a
refusal comes before any work)."""

import pytest

from ultra.data.transforms import EvalConfig, ViewConfig
from ultra.errors import ConfigError
from ultra.graphs.knn import GraphSpec, KnnConfig
from ultra.head.exact_module import ExactHeadModule
from ultra.head.projection import ProjectionHead
from ultra.readout.fit import ReadoutConfig


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ViewConfig(scheme="six"), "data.views.scheme must be one of"),
        (lambda: ViewConfig(crop_fraction=0), r"data.views: .*crop_fraction in \(0, 1\], got 224, 320, 0"),
        (
            lambda: EvalConfig(resize=64, crop=320),
            r"evaluation.crop \(320\) exceeds evaluation.resize \(64\)",
        ),
        (lambda: EvalConfig(resize=0), r"evaluation.resize must be a positive number of pixels, got 0"),
        (lambda: KnnConfig(space="pca"), "knn.space must be one of .*got 'pca'"),
        (lambda: KnnConfig(k_any=0), r"k_intra, k_inter and k_any must be >= 0 and not all 0"),
        (lambda: KnnConfig(candidate_images=0), "candidate_images must be >= 1 or None"),
        (lambda: KnnConfig(k_intra=16).check_counts(16), r"data.knn.k_intra=16 exceeds the 15 other tokens of a view"),
        (
            lambda: KnnConfig(k_any=60, candidate_images=1).check_counts(16),
            r"data.knn.k_any=60 / k_inter=0 exceed the tokens searched: a view's 16 and those of its 1 "
            r"candidate images",
        ),
        (lambda: GraphSpec("vq", 3), "graph kind must be one of"),
        (lambda: GraphSpec("kq", 3, weight=0), "graph weight must be positive"),
        (
            lambda: ReadoutConfig(raw_spaces=("raw", "pca")),
            r"readout.raw_spaces must be distinct token spaces of \('raw', 'centred', 'whitened'\)",
        ),
        (lambda: ReadoutConfig(extra_clusters=-30), "extra_clusters must be >= 0"),
        (
            lambda: ReadoutConfig(extra_clusters=252).check_clusters(4, 10_000),
            r"4 classes \+ readout.extra_clusters 252 = 256 clusters; label maps hold at most 255",
        ),
        (
            lambda: ReadoutConfig(kmeans_sample=3).check_clusters(4, 480),
            r"4 clusters, but readout.kmeans_sample=3 and the training set gives 480 tokens",
        ),
        (
            lambda: ReadoutConfig(extra_clusters=250).check_clusters(4, 96),
            r"254 clusters, but readout.kmeans_sample=65536 and the training set gives 96 tokens",
        ),
        (lambda: ExactHeadModule(48, out_dim=48), r"1 <= model.out_dim < the token dimension 48, got 48"),
        (lambda: ExactHeadModule(64, ridge=-1), "model.ridge must be >= 0"),
        (lambda: ProjectionHead(48, 8, "conv"), "head architecture must be one of"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_option(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_graph_kinds_are_named_by_their_token_kinds():
    assert GraphSpec("xx", 3).name == "xx3" and GraphSpec("kq", 3).token_keys == (("q", 3), ("k", 3))
    with pytest.raises(ConfigError, match=r"graph kind must be one of \['kq', 'nn', 'vv', 'xx'\], got 'feat'"):
        GraphSpec("feat", 3)


def test_parsing_a_training_config_reads_no_weights(tmp_path, monkeypatch):
    """The argument links (the head's input size) and the settings' checks take the backbone's sizes from the model
    built on the meta device: the weights are read once, when the cache is built, not per parse or per seed."""
    from helpers import synthetic_config, tiny_overrides

    import ultra.backbone.vit
    from ultra.training.config import parse_training

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read while parsing")

    monkeypatch.setattr(ultra.backbone.vit, "load_weights", no_weights)
    cli = parse_training(["--config", str(synthetic_config(tmp_path / "c.yaml")), *tiny_overrides(tmp_path)])
    assert cli.model.head.net.in_features == 48 and cli.datamodule.feature_keys == [("x", 2)]
    with pytest.raises(ConfigError, match="data.views.size=60 is not a multiple of the patch size 16"):
        parse_training(
            [
                "--config",
                str(synthetic_config(tmp_path / "c.yaml")),
                *tiny_overrides(tmp_path),
                "--data.views.size",
                "60",
            ]
        )


def test_an_option_ending_the_command_line_without_its_value_is_named():
    from ultra.training.config import split_seeds_argument, take_configs

    assert take_configs(["--config", "a.yaml", "--x", "1", "--config=b.yaml"]) == (["a.yaml", "b.yaml"], ["--x", "1"])
    with pytest.raises(ConfigError, match="--config needs a training config file"):
        take_configs(["--checkpoint", "c", "--config"])
    with pytest.raises(ConfigError, match="--seeds needs a comma-separated list of integers"):
        split_seeds_argument(["--seeds"])
