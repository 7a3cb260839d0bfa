"""The README's main job: configs/demo.yaml with the real offline weights, no network."""

import pytest
from helpers import config_path, needs_offline

from ultra.cli import train as train_cli

pytestmark = [pytest.mark.slow, needs_offline]


def test_demo_trains_and_its_head_beats_raw_kmeans(tmp_path):
    report = train_cli.run(
        [
            "--config",
            str(config_path("demo.yaml")),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--data.cache.dir",
            str(tmp_path / "cache"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    head, raw = report["readouts"]["head"], report["readouts"]["raw"]
    assert head["miou"] > raw["miou"] + 0.05, (head["miou"], raw["miou"])
    assert report["readouts"]["probe"]["miou"] > head["miou"]  # the supervised reference stays above
    assert (tmp_path / "run" / "model.safetensors").is_file()
