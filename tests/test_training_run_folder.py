"""A run folder's identity: what a rerun resumes, what it refuses, and what a killed or damaged run leaves."""

import json

import numpy as np
import pytest
import torch
from helpers import sgd_overrides, synthetic_config, tiny_overrides, truncate

from ultra.cli import train as train_cli
from ultra.errors import ConfigError


def test_a_rerun_with_other_settings_is_refused_and_fresh_starts_over(tmp_path, caplog):
    from ultra.cli import train as train_cli
    from ultra.readout.checkpoint import read_checkpoint

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path), *sgd_overrides()]
    first = train_cli.run(args)
    model = tmp_path / "run" / "model.safetensors"
    before = model.read_bytes()
    changes = [
        (["--model.lr", "0.1"], "model.lr"),
        (["--model.out_dim", "6"], "model.out_dim"),
        (["--self_training.rounds", "1"], "self_training.rounds"),  # the exported head would be another one
        (["--readout.extra_clusters", "1"], "readout.extra_clusters"),  # and so would its centroids
    ]
    for change, named in changes:
        with pytest.raises(ConfigError, match=rf"other settings: {named} .*--fresh to discard"):
            train_cli.run(args + change)
        assert model.read_bytes() == before  # nothing was overwritten
    with caplog.at_level("INFO", logger="ultra"):
        again = train_cli.run(args + ["--data.num_workers", "0"])  # same settings: resumes, same head
    assert "resuming from" in caplog.text
    assert again["readouts"] == first["readouts"]
    train_cli.run(args + ["--model.out_dim", "6", "--fresh"])
    header, _ = read_checkpoint(model)
    assert header["readouts"]["head"]["head"]["out_dim"] == 6
    assert header["training"]["self_training"]["rounds"] == 0


def test_an_exact_run_records_only_what_determines_its_head(tmp_path, caplog):
    from ultra.cli import train as train_cli

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path)]
    train_cli.run(args)
    head = _head_tensors(tmp_path / "run" / "model.safetensors")
    recorded = json.loads((tmp_path / "run" / "checkpoints" / "run.json").read_text())
    assert (
        "model.out_dim" in recorded and "data.knn.k_any" in recorded and "data.train_dataset.init_args.seed" in recorded
    )
    inert = (
        "model.lr",
        "model.weight_decay",
        "model.ortho_weight",
        "model.hidden_dim",
        "data.batches.steps_per_epoch",
        "evaluation.resize",
        "data.val_dataset.init_args.seed",
        "data.cache.dir",
        "seed_everything",
    )
    assert not [key for key in inert if key in recorded]
    # the node batches' size and seed, and evaluation-only options, resume the exact run instead of refusing it
    changed = ["--data.batches.steps_per_epoch", "7", "--seed_everything", "4", "--evaluation.resize", "80"]
    with caplog.at_level("INFO", logger="ultra"):
        train_cli.run(args + changed)
    assert "resuming from" in caplog.text
    resumed = _head_tensors(tmp_path / "run" / "model.safetensors")
    assert resumed.keys() == head.keys() and all(torch.equal(resumed[k], head[k]) for k in head)
    with pytest.raises(ConfigError, match="other settings: data.knn.k_any"):
        train_cli.run(args + ["--data.knn.k_any", "5"])


def _head_tensors(path) -> dict:
    from ultra.readout.checkpoint import read_checkpoint

    return {k: v for k, v in read_checkpoint(path)[1].items() if k.startswith("head.head.")}


def test_damaged_caches_graphs_and_checkpoints_are_rebuilt_or_refused(tmp_path, caplog):

    from ultra.cli import train as train_cli

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path)]
    reference = train_cli.run(args)
    cache = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    tokens = next(cache.glob("x*.npy"))
    original = np.load(tokens).copy()
    truncate(tokens)
    graph = next((cache / "graphs").glob("xx*.safetensors"))
    truncate(graph)
    with caplog.at_level("WARNING", logger="ultra"):
        again = train_cli.run(args + ["--fresh"])
    assert f"{tokens}" in caplog.text and "rebuilding the cache" in caplog.text
    assert again["readouts"] == reference["readouts"]
    assert np.array_equal(np.load(tokens), original)
    truncate(graph)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ultra"):
        assert train_cli.run(args + ["--fresh"])["readouts"] == reference["readouts"]
    assert f"stored operator {graph} is damaged" in caplog.text
    truncate(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"checkpoint .*last.ckpt is damaged"):
        train_cli.run(args)


def test_temporary_files_of_killed_writes_are_cleared_by_the_next_run(tmp_path):
    """A kill between an atomic write's start and its rename leaves a hidden .part file; the next run removes it."""
    from ultra.cli import train as train_cli

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=1), "--readout.probe", "false"]
    train_cli.run(args)
    graph = next((tmp_path / "cache").rglob("xx2-*.safetensors"))
    stale = [
        tmp_path / "run" / ".model.safetensors.x1.part",
        tmp_path / "run" / "checkpoints" / ".last.ckpt.x2.part",
        tmp_path / "run" / "eval" / ".eval.json.x3.part",
        graph.parent / f".{graph.name}.x4.part",
    ]
    for part in stale:
        part.write_bytes(b"half")
    graph.unlink()  # its rebuild clears its own stale parts
    train_cli.run(args + ["--fresh"])
    assert not [part for part in stale if part.exists()] and graph.is_file()


def test_a_finished_sgd_run_rerun_with_fewer_epochs_is_refused(tmp_path):
    """Resuming would keep the longer run's head and report it as the shorter one's."""
    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=2), *sgd_overrides(), "--readout.probe", "false"]
    train_cli.run(args)
    with pytest.raises(ConfigError, match=r"run trained for 2 epochs, more than --trainer.max_epochs 1: pass --fresh"):
        train_cli.run(args + ["--trainer.max_epochs", "1"])
    assert train_cli.run(args + ["--trainer.max_epochs", "3"])["readouts"]["head"]["miou"] > 0
