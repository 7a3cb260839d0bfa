"""Tiny training runs for the tests: a 3-block random ViT, small images, few steps."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import REPO, TINY_VIT


def tiny_overrides(root: Path, epochs: int = 2, steps: int = 3) -> list[str]:
    """Command-line overrides that make any config a few-second run writing under ``root``."""
    return [
        "--data.backbone", "vit_tiny_patch16_224", "--data.weights", "random",
        "--data.model_kwargs", json.dumps(TINY_VIT),
        "--data.views.size", "64", "--data.views.resize", "96", "--data.evaluation.resize", "64",
        "--data.evaluation.crop", "64", "--data.batches.nodes", "128", "--data.batches.steps_per_epoch", str(steps),
        "--data.num_workers", "0", "--data.cache.batch_size", "8", "--data.cache.dir", str(root / "cache"),
        "--data.knn.candidate_images", "4",
        "--model.out_dim", "8",
        "--trainer.max_epochs", str(epochs), "--trainer.devices", "1", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(root / "run"), "--trainer.enable_progress_bar", "false",
        "--readout.probe_steps", "20", "--readout.restarts", "2", "--readout.crf", "false",
    ]


def synthetic_config(path: Path, train_images: int = 6, val_images: int = 5, model: dict | None = None, **data) -> Path:
    """A config with synthetic train/val sets (same class styles, different layouts)."""
    config = {
        "seed_everything": 0,
        "model": {"out_dim": 8, "lr": 0.01, **(model or {})},
        "data": {
            "train_dataset": {"class_path": "ultra.data.SyntheticScenes",
                              "init_args": {"num_images": train_images, "size": 96, "num_classes": 4, "seed": 0}},
            "val_dataset": {"class_path": "ultra.data.SyntheticScenes",
                            "init_args": {"num_images": val_images, "size": 96, "num_classes": 4, "seed": 1}},
            "feature_layers": [-1],
            "graphs": [{"kind": "feat", "layer": -1}, {"kind": "kq", "layer": 1, "weight": 0.5}],
            "knn": {"k_any": 6},
            **data,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def config_path(name: str) -> Path:
    return REPO / "configs" / name
