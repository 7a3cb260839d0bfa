"""No silent wrong figure: evaluation settings and data that would score pixels that do not exist are refused."""

import numpy as np
import pytest
from helpers import sgd_overrides, synthetic_config, tiny_overrides
from PIL import Image

from ultra.cli import evaluate as eval_cli
from ultra.cli import train as train_cli
from ultra.data.transforms import EvalConfig
from ultra.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = synthetic_config(root / "tiny.yaml")
    train_cli.run(["--config", str(config), *tiny_overrides(root, epochs=1), "--readout.probe", "false"])
    return root / "run" / "model.safetensors", config


def photo_folder(root, classes: list[str], label=None, images: int = 3):
    """An image folder of random photos, with label PNGs of ``label`` (default: classes by quarter) and
    ``classes.txt``."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        ids = (
            np.full((80, 96), label, np.uint8)
            if label is not None
            else np.repeat(np.arange(4, dtype=np.uint8), 24)[None].repeat(80, 0)
        )
        Image.fromarray(ids).save(root / "labels" / f"p{i}.png")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


def folder_dataset(root) -> str:
    return f'{{"class_path": "ultra.data.ImageFolder", "init_args": {{"root": "{root}"}}}}'


def test_a_crop_larger_than_the_resize_is_refused_everywhere(tmp_path, checkpoint):
    """Such a crop is padded, and the padding would count as labelled pixels of class 0."""
    with pytest.raises(ConfigError, match=r"data.evaluation.crop \(320\) exceeds data.evaluation.resize \(64\)"):
        EvalConfig(resize=64, crop=320)
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"data.evaluation.crop \(96\) exceeds data.evaluation.resize \(64\)"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--data.evaluation.crop", "96"])
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training
    model, config = checkpoint
    args = ["--checkpoint", str(model), "--config", str(config), "--output", str(tmp_path / "eval")]
    with pytest.raises(ConfigError, match=r"the config's evaluation.crop \(320\) exceeds --resize \(64\)"):
        eval_cli.run(args + ["--resize", "64"])
    with pytest.raises(ConfigError, match=r"--crop must be a positive number of pixels, got 0"):
        eval_cli.run(args + ["--resize", "64", "--crop", "0"])
    assert not (tmp_path / "eval").exists()


def test_images_without_a_labelled_pixel_are_refused_and_leave_no_report_folder(tmp_path, checkpoint):
    model, _ = checkpoint
    folder = photo_folder(tmp_path / "photos", ["stuff_0", "stuff_1", "thing_2", "thing_3"], label=255)
    output = tmp_path / "eval"
    with pytest.raises(DataError, match="the 3 evaluated images hold no labelled pixel"):
        eval_cli.run(
            [
                "--checkpoint",
                str(model),
                "--dataset",
                folder_dataset(folder),
                "--resize",
                "64",
                "--crop",
                "64",
                "--output",
                str(output),
            ]
        )
    assert not output.exists()


def test_a_reordered_or_repeated_class_list_is_refused(tmp_path, checkpoint):
    """The same number of classes in another order would score every class against another's pixels."""
    model, _ = checkpoint
    reordered = photo_folder(tmp_path / "reordered", ["stuff_1", "stuff_0", "thing_2", "thing_3"])
    args = ["--checkpoint", str(model), "--resize", "64", "--crop", "64", "--output", str(tmp_path / "eval")]
    with pytest.raises(ConfigError, match=r"first difference at id 0 \('stuff_1' here, 'stuff_0' in the checkpoint\)"):
        eval_cli.run(args + ["--dataset", folder_dataset(reordered)])
    repeated = photo_folder(tmp_path / "repeated", ["stuff_0", "stuff_0", "thing_2", "thing_3"])
    with pytest.raises(DataError, match=r"the class names \['stuff_0'\] appear more than once"):
        eval_cli.run(args + ["--dataset", folder_dataset(repeated)])


def test_more_clusters_than_an_8bit_label_map_holds_are_refused_before_training(tmp_path):
    """Cluster ids are written as 8-bit PNGs with 255 for unmatched pixels: id 256 would wrap to 0."""
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(
        ConfigError, match=r"4 classes \+ readout.extra_clusters 252 = 256 clusters; label maps hold at most 255"
    ):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--readout.extra_clusters", "252"])
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["--data.knn.k_any", "60", "--data.knn.candidate_images", "1"],
            r"data.knn.k_any=60 / k_inter=0 exceed the tokens searched: a view's 16 and those of its 1 "
            r"candidate images",
        ),
        (["--data.knn.k_intra", "16"], r"data.knn.k_intra=16 exceeds the 15 other tokens of a view"),
        (
            ["--readout.raw_spaces", "[raw, pca]"],
            r"readout.raw_spaces must be distinct token spaces of \('raw', 'centred', 'whitened'\)",
        ),
        (
            ["--readout.kmeans_sample", "3"],
            r"4 clusters, but readout.kmeans_sample=3 and the training set gives 480 tokens",
        ),
        (
            ["--readout.extra_clusters", "250", "--data.views.scheme", "center"],
            r"254 clusters, but readout.kmeans_sample=65536 and the training set gives 96 tokens",
        ),
    ],
)
def test_settings_that_would_fail_late_are_refused_before_any_work(tmp_path, override, message):
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=message):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), *override])
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", r"--device 'foo' is not a device"),
        ("cuda", r"--device cuda: this machine has no cuda device"),
    ],
)
def test_segment_refuses_a_device_it_cannot_use(tmp_path, checkpoint, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model, _ = checkpoint
    from ultra.cli import segment as segment_cli

    with pytest.raises(ConfigError, match=message):
        segment_cli.run([str(model), str(tmp_path), "-o", str(tmp_path / "out"), "--device", device])


def test_a_validation_set_without_a_labelled_pixel_is_refused_before_training(tmp_path):
    folder = photo_folder(tmp_path / "photos", ["stuff_0", "stuff_1", "thing_2", "thing_3"], label=255)
    config = synthetic_config(
        tmp_path / "c.yaml", val_dataset={"class_path": "ultra.data.ImageFolder", "init_args": {"root": str(folder)}}
    )
    with pytest.raises(DataError, match="none of the 3 label maps has a labelled pixel"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path)])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_finished_sgd_run_rerun_with_fewer_epochs_is_refused(tmp_path):
    """Resuming would keep the longer run's head and report it as the shorter one's."""
    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=2), *sgd_overrides(), "--readout.probe", "false"]
    train_cli.run(args)
    with pytest.raises(ConfigError, match=r"run trained for 2 epochs, more than --trainer.max_epochs 1: pass --fresh"):
        train_cli.run(args + ["--trainer.max_epochs", "1"])
    assert train_cli.run(args + ["--trainer.max_epochs", "3"])["readouts"]["head"]["miou"] > 0
