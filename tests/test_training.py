"""A training run end to end on a tiny ViT: what it writes, its readouts, and what it refuses before any work."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, photo_folder, sgd_overrides, synthetic_config, tiny_overrides, without_crf
from PIL import Image

import ultra
from ultra.cli import train as train_cli
from ultra.errors import ConfigError, CRFUnavailable, DataError
from ultra.readout.checkpoint import read_checkpoint


def test_training_writes_checkpoints_report_and_an_inference_checkpoint(trained):
    root, _, report = trained
    assert (root / "run" / "checkpoints" / "last.ckpt").is_file()
    assert set(report["readouts"]) == {"head", "raw", "raw_centred", "raw_whitened", "probe", "oracle"}
    raws = ("raw", "raw_centred", "raw_whitened")
    assert report["best_baseline"] == {"head": max(raws, key=lambda n: report["readouts"][n]["miou"])}
    for name, r in report["readouts"].items():  # every val pixel counted once; the figures follow from the confusion
        confusion = np.array(r["confusion"], dtype=np.float64)
        assert confusion.sum() == 5 * 64 * 64, name
        match = np.array(r["cluster_to_class"]) if "cluster_to_class" in r else np.arange(len(confusion))
        matched = np.zeros((4, 4))
        for cluster, cls in enumerate(match):
            if cls >= 0:
                matched[cls] += confusion[cluster]
        hits = np.diag(matched)
        assert r["acc"] == pytest.approx(hits.sum() / confusion.sum()), name
        union = matched.sum(1) + confusion.sum(0) - hits
        assert r["miou"] == pytest.approx(np.mean(hits[union > 0] / union[union > 0])), name
    assert (
        json.loads((root / "run" / "eval" / "eval.json").read_text())["readouts"]["head"]["miou"]
        == report["readouts"]["head"]["miou"]
    )
    assert (root / "run" / "eval" / "examples.png").is_file() and (
        root / "run" / "eval" / "confusion_head.png"
    ).is_file()
    meta, tensors = read_checkpoint(root / "run" / "model.safetensors")
    assert meta["classes"] == ["stuff_0", "stuff_1", "thing_2", "thing_3"]
    assert meta["cluster_to_class"]["head"] == report["readouts"]["head"]["cluster_to_class"]
    assert tensors["head.centroids"].shape == (4, 8)
    assert "raw.token_map.weight" not in tensors and tensors["raw_whitened.token_map.weight"].shape == (48, 48)


def test_the_oracle_head_clusters_the_probe_s_logits(trained, tiny_vit, capsys):
    """The ceiling of a linear map read out by k-means: the probe's own logits, as a head, with K = classes."""
    root, _, report = trained
    segmenter = ultra.load(root / "run" / "model.safetensors")
    oracle, probe = segmenter.readouts["oracle"], segmenter.readouts["probe"]
    assert oracle.head.architecture == "affine" and oracle.num_outputs == 4
    tokens = torch.randn(7, 48)
    assert torch.allclose(oracle.head(tokens), probe(tokens), atol=1e-5)
    assert report["readouts"]["oracle"]["cluster_to_class"] == segmenter.cluster_to_class["oracle"].tolist()
    from ultra.evaluation.protocol import format_report

    head, raw, ceiling = (report["readouts"][n]["miou"] for n in ("head", report["best_baseline"]["head"], "oracle"))
    line = format_report(report).splitlines()[-1]
    if ceiling > raw:
        assert f"{100 * (head - raw) / (ceiling - raw):.0f}% of the gap to the oracle head" in line
    else:
        assert "oracle" not in line


def test_whitened_baseline_readout_clusters_the_whitened_tokens(trained, tiny_vit):
    """The loaded whitened baseline scores a token by the cosine of its whitened form to the centroids."""
    root, _, _ = trained
    readout = ultra.load(root / "run" / "model.safetensors").readouts["raw_whitened"]
    tokens = torch.randn(5, 48)
    whitened = F.normalize(tokens @ readout.token_map.weight.T + readout.token_map.bias, dim=-1)
    assert torch.allclose(readout(tokens), whitened @ readout.centroids.T, atol=1e-5)
    plain = F.normalize(tokens, dim=-1) @ readout.centroids.T
    assert not torch.allclose(readout(tokens), plain, atol=1e-3)


def test_crf_requested_without_the_package_fails_before_training(tmp_path, monkeypatch):
    without_crf(monkeypatch)
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(CRFUnavailable, match="pip install 'ultra-seg\\[crf\\]'"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--evaluation.crf", "true"])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_validation_set_fails_before_training(tmp_path):
    import numpy as np

    from ultra.cli import train as train_cli
    from ultra.errors import DataError

    folder = tmp_path / "val"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "images" / f"{name}.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "labels" / "a.png")
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(folder / "labels" / "b.png")  # 9 is no class of 4
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(DataError, match=r"labels/b.png: values \[9\]"):
        train_cli.run(
            [
                "--config",
                str(config),
                *tiny_overrides(tmp_path),
                "--data.val_dataset",
                json.dumps({"class_path": "ultra.data.ImageFolder", "init_args": {"root": str(folder), "classes": 4}}),
            ]
        )
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_settings_that_would_fail_late_are_refused_before_any_work(tmp_path):
    """One command-level check that a setting's refusal comes before the cache, the graphs or a checkpoint; the
    settings themselves are checked on their config classes (tests/test_settings.py)."""
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"data.knn.k_any=60 / k_inter=0 exceed the tokens searched"):
        train_cli.run(
            [
                "--config",
                str(config),
                *tiny_overrides(tmp_path),
                "--data.knn.k_any",
                "60",
                "--data.knn.candidate_images",
                "1",
            ]
        )
    with pytest.raises(ConfigError, match=r"4 classes \+ readout.extra_clusters 252 = 256 clusters"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--readout.extra_clusters", "252"])
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_a_validation_set_without_a_labelled_pixel_is_refused_before_training(tmp_path):
    folder = photo_folder(tmp_path / "photos", ["stuff_0", "stuff_1", "thing_2", "thing_3"], label=255)
    config = synthetic_config(
        tmp_path / "c.yaml", val_dataset={"class_path": "ultra.data.ImageFolder", "init_args": {"root": str(folder)}}
    )
    with pytest.raises(DataError, match="none of the 3 label maps has a labelled pixel"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path)])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_self_trained_head_is_exported_as_an_ordinary_affine_head(tmp_path, tiny_vit):
    """The self-trained head leaves as an affine head, and the file is the head the run evaluated: ultra-eval of the
    exported checkpoint on the run's own validation set gives the run's head figures."""
    from ultra.cli import evaluate as eval_cli

    config = synthetic_config(tmp_path / "tiny.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=1), "--readout.probe", "false"]
    report = train_cli.run([*args, "--self_training.rounds", "2"])
    history = report["settings"]["self_training"]["history"]
    assert report["settings"]["self_training"]["rounds"] == 2 and [r["round"] for r in history] == [1, 2]
    segmenter = ultra.load(tmp_path / "run" / "model.safetensors")
    head = segmenter.readouts["head"].head
    assert head.architecture == "affine" and (head.in_dim, head.out_dim) == (48, 4)
    again = eval_cli.run(
        ["--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--config", str(config), "--resize", "64"]
        + ["--crop", "64", "--output", str(tmp_path / "again")]
    )
    for figure in ("miou", "acc"):
        assert again["readouts"]["head"][figure] == pytest.approx(report["readouts"]["head"][figure])


def test_a_one_colour_training_set_is_an_error_and_exports_nothing(tmp_path):
    """Tokens all alike: the kq graph has no edges (or the solve is not finite); the run stops before any model."""
    folder = photo_folder(tmp_path / "photos", ["stuff_0", "stuff_1", "thing_2", "thing_3"], images=4)
    for image in (folder / "images").iterdir():
        Image.new("RGB", (96, 80), (120, 30, 200)).save(image)
    config = synthetic_config(
        tmp_path / "c.yaml", train_dataset={"class_path": "ultra.data.ImageFolder", "init_args": {"root": str(folder)}}
    )
    with pytest.raises(DataError, match=r"graph of the training set has no edges|exact solve .* is not finite"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--evaluation.run", "false"])
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_self_training_on_an_mlp_s_embedding_is_refused_before_the_fit(tmp_path):
    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path), *sgd_overrides(), "--model.architecture", "mlp"]
    args += ["--self_training.rounds", "1", "--self_training.features", "embedding"]
    with pytest.raises(ConfigError, match="'embedding' needs a linear or affine head, not an MLP"):
        train_cli.run(args)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "cache").exists()


def test_the_command_s_output_says_what_the_exact_solver_does_without_lightning_s_tips(tmp_path):
    """``ultra-train`` with its progress bars on: the exact solver's one pass shows its own bar (not Lightning's
    "Epoch 0/0"), then says it solves; Lightning's product tips and its TensorBoard note are left out."""
    config = synthetic_config(tmp_path / "c.yaml")
    args = [*tiny_overrides(tmp_path), "--trainer.enable_progress_bar", "true", "--evaluation.run", "false"]
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(config), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert "exact solver: summing the loss's quadratic forms" in shown
    assert "Epoch 0" not in shown
    assert "💡" not in shown and "tensorboardX" not in shown
