"""No silent wrong figure: evaluation settings and data that would score pixels that do not exist are refused."""
import numpy as np
import pytest
from PIL import Image

from runs import synthetic_config, tiny_overrides
from ultra.cli import evaluate as eval_cli
from ultra.cli import train as train_cli
from ultra.data.io import DataError
from ultra.errors import ConfigError
from ultra.head.datamodule import EvalConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = synthetic_config(root / "tiny.yaml")
    train_cli.run(["--config", str(config), *tiny_overrides(root, epochs=1), "--readout.probe", "false"])
    return root / "run" / "model.safetensors", config


def unlabelled_folder(root, images: int = 3):
    """An image folder whose label PNGs mark every pixel 'unlabelled' (255)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        Image.fromarray(np.full((80, 96), 255, np.uint8)).save(root / "labels" / f"p{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    return root


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
    folder = unlabelled_folder(tmp_path / "photos")
    dataset = f'{{"class_path": "ultra.data.ImageFolder", "init_args": {{"root": "{folder}"}}}}'
    output = tmp_path / "eval"
    with pytest.raises(DataError, match="the 3 evaluated images hold no labelled pixel"):
        eval_cli.run(["--checkpoint", str(model), "--dataset", dataset, "--resize", "64", "--crop", "64",
                      "--output", str(output)])
    assert not output.exists()
