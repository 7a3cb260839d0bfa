"""Whole runs in their own processes: resume after SIGKILL, DDP on CPU, the protocol configs on format fixtures."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from helpers import HEAD_MODULES, REPO, config_path, save_jpg, save_png, synthetic_config, tiny_overrides

from ultra.cli import train as train_cli
from ultra.data import Cityscapes27, CocoStuff27, EvalTransform
from ultra.readout.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow


def _train_command(config, root, *extra, epochs=2, steps=3):
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        str(config),
        *tiny_overrides(root, epochs, steps),
        *extra,
    ]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("solver", ["sgd", "exact"])
def test_a_killed_training_resumes_and_ends_like_an_uninterrupted_one(tmp_path, solver):
    """SGD: killed after its first epoch's checkpoint, with many epochs to go. Exact: the solve is one pass,
    so its checkpoint exists only once the head is solved; killed then (before the export), the rerun resumes
    from it instead of solving again."""
    config = synthetic_config(tmp_path / "tiny.yaml")
    epochs, steps = (40, 20) if solver == "sgd" else (1, 3)
    subprocess.run(
        _train_command(config, tmp_path / "a", "--model", HEAD_MODULES[solver], epochs=epochs, steps=steps),
        check=True,
        env=_env(),
        capture_output=True,
    )
    command = _train_command(config, tmp_path / "b", "--model", HEAD_MODULES[solver], epochs=epochs, steps=steps)
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "b" / "run" / "model.safetensors").exists()
    killed = torch.load(last, map_location="cpu", weights_only=True)
    if solver == "sgd":
        assert killed["epoch"] < epochs - 1  # killed with epochs to go
    else:  # killed after the solve: the checkpoint holds the solved head
        _, a = read_checkpoint(tmp_path / "a" / "run" / "model.safetensors")
        assert torch.allclose(killed["state_dict"]["head.net.weight"], a["head.head.net.weight"], atol=1e-6)
    resumed = subprocess.run(command, check=True, env=_env(), capture_output=True, text=True)
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr  # Lightning's word: it resumed
    _, a = read_checkpoint(tmp_path / "a" / "run" / "model.safetensors")
    _, b = read_checkpoint(tmp_path / "b" / "run" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    report_a = json.loads((tmp_path / "a" / "run" / "eval" / "eval.json").read_text())["readouts"]
    report_b = json.loads((tmp_path / "b" / "run" / "eval" / "eval.json").read_text())["readouts"]
    assert report_a == report_b


def test_ddp_on_two_cpu_processes_trains_and_evaluates_like_one(tmp_path):
    config = synthetic_config(tmp_path / "tiny.yaml", val_images=5)  # odd: padding duplicates would change the metric
    trained = subprocess.run(
        _train_command(config, tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2"),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert trained.returncode == 0, trained.stderr[-4000:]
    checkpoint = tmp_path / "run" / "model.safetensors"
    assert checkpoint.is_file()
    reports = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        out = tmp_path / f"eval{devices}"
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "eval.py"),
                "--checkpoint",
                str(checkpoint),
                "--config",
                str(config),
                "--resize",
                "64",
                "--crop",
                "64",
                "--trainer.accelerator",
                "cpu",
                "--trainer.devices",
                str(devices),
                "--trainer.strategy",
                strategy,
                "--output",
                str(out),
            ],
            env=_env(),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        reports[devices] = json.loads((out / "eval.json").read_text())["readouts"]
    for name in reports[1]:
        assert reports[2][name]["confusion"] == reports[1][name]["confusion"], name
        assert reports[2][name]["miou"] == pytest.approx(reports[1][name]["miou"])


def _cocostuff_fixture(root):
    rng = np.random.default_rng(0)
    for split, names in (
        ("train2017", [f"{i:012d}" for i in range(1, 5)]),
        ("val2017", [f"{i:012d}" for i in range(11, 14)]),
    ):
        for name in names:
            save_jpg(root / "images" / split / f"{name}.jpg", rng.integers(0, 255, (72, 96, 3), dtype=np.uint8))
            label = rng.choice([0, 2, 17, 123, 156, 255], size=(72, 96)).astype(np.uint8)
            save_png(root / "annotations" / split / f"{name}.png", label)
        (root / "curated" / split).mkdir(parents=True)
        list_name = "Coco164kFull_Stuff_Coarse.txt" if split == "train2017" else "Coco164kFull_Stuff_Coarse_7.txt"
        (root / "curated" / split / list_name).write_text("\n".join(names) + "\n")


def _cityscapes_fixture(root):
    rng = np.random.default_rng(1)
    for split, count in (("train", 4), ("val", 3)):
        for i in range(count):
            stem = f"aachen_{i:06d}_000019"
            save_png(
                root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png",
                rng.integers(0, 255, (64, 128, 3), dtype=np.uint8),
            )
            save_png(
                root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png",
                rng.integers(0, 34, (64, 128), dtype=np.uint8),
            )


def _print_config(*configs: str) -> dict:
    args = [a for c in configs for a in ("--config", str(config_path(c)))]
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, "--print_config"],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return yaml.safe_load(done.stdout)


@pytest.mark.parametrize("protocol", ["cocostuff27.yaml", "cityscapes27.yaml"])
def test_protocol_configs_compose_with_a_backbone_and_evaluate_every_labelled_pixel(protocol, tmp_path):
    alone = _print_config(protocol)
    composed = _print_config(protocol, "backbones/dino_vits8.yaml")
    assert composed["data"].pop("backbone") == "dino_vits8" and alone["data"].pop("backbone") == "dinov2_vits14"
    assert composed == alone  # the backbone file changes the backbone and nothing else
    data_root = tmp_path / "data"
    dataset_class = CocoStuff27 if protocol.startswith("cocostuff") else Cityscapes27
    (_cocostuff_fixture if dataset_class is CocoStuff27 else _cityscapes_fixture)(data_root)
    roots = [f"--data.{part}.init_args.root" for part in ("train_dataset", "val_dataset")]
    report = train_cli.run(
        [
            "--config",
            str(config_path(protocol)),
            *tiny_overrides(tmp_path, epochs=1, steps=2),
            roots[0],
            str(data_root),
            roots[1],
            str(data_root),
            "--data.knn.k_any",
            "6",
        ]
    )
    assert report["classes"] == list(dataset_class(data_root, "val").classes) and len(report["classes"]) == 27
    meta, _ = read_checkpoint(tmp_path / "run" / "model.safetensors")
    assert meta["classes"] == report["classes"]
    # every labelled pixel of the val split, through the protocol's resize and crop, is counted once per readout
    val = dataset_class(data_root, "val", transform=EvalTransform(64, 64))
    labels = torch.cat([val[i]["label"].flatten() for i in range(len(val))])
    expected = torch.bincount(labels[labels != 255].long(), minlength=27)
    assert expected.sum() > 0
    for name in ("head", "raw", "probe"):
        assert torch.equal(torch.tensor(report["readouts"][name]["confusion"]).sum(0), expected), name
