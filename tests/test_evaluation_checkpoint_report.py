"""No silent wrong figure: evaluation settings and data that would score pixels that do not exist are refused."""

import pytest
from helpers import folder_dataset, photo_folder, synthetic_config, tiny_overrides

from ultra.cli import evaluate as eval_cli
from ultra.cli import train as train_cli
from ultra.data.transforms import EvalConfig
from ultra.errors import ConfigError, DataError


def test_a_crop_larger_than_the_resize_is_refused_everywhere(tmp_path, checkpoint):
    """Such a crop is padded, and the padding would count as labelled pixels of class 0."""
    with pytest.raises(ConfigError, match=r"evaluation.crop \(320\) exceeds evaluation.resize \(64\)"):
        EvalConfig(resize=64, crop=320)
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"evaluation.crop \(96\) exceeds evaluation.resize \(64\)"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--evaluation.crop", "96"])
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
    with pytest.raises(DataError, match="none of the 3 label maps has a labelled pixel"):
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
