"""The feature cache: built once, resumed, shared, checked when read, and rebuilt or named when damaged."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, synthetic_config, tiny_overrides, truncate
from PIL import Image

from ultra.cli import train as train_cli
from ultra.data import FiveCropViews, SyntheticScenes
from ultra.data.cache import FeatureCache
from ultra.errors import DataError


class _Crashing(SyntheticScenes):
    crash_at = None

    def load(self, index):
        if index == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().load(index)


def test_a_cache_with_more_tokens_serves_runs_that_need_fewer(tmp_path, tiny_vit):
    data, views = SyntheticScenes(3, 96, 4), FiveCropViews(64, 96)
    wide = FeatureCache.open_or_build(data, tiny_vit, [("x", 1), ("n", 2), ("q", 2)], views, tmp_path, progress=False)
    narrow = FeatureCache.open_or_build(data, tiny_vit, [("n", -1)], views, tmp_path, progress=False)
    assert narrow.path == wide.path and len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
    other = FeatureCache.open_or_build(data, tiny_vit, [("v", 2)], views, tmp_path, progress=False)
    assert other.path != wide.path and other.path.name.split("-")[0] == wide.path.name.split("-")[0]
    elsewhere = FeatureCache.open_or_build(data, tiny_vit, [("x", 1)], FiveCropViews(64, 112), tmp_path, progress=False)
    assert elsewhere.path.name.split("-")[0] != wide.path.name.split("-")[0]  # other views: another source


def test_feature_cache_resumes_an_interrupted_build(tmp_path, tiny_vit):
    views = FiveCropViews(64, 96)
    reference = FeatureCache.open_or_build(
        SyntheticScenes(5, 96, 4), tiny_vit, [("x", 1), ("q", 2)], views, tmp_path / "a", batch_size=2, progress=False
    )
    crashing = _Crashing(5, 96, 4)
    crashing.crash_at = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        FeatureCache.open_or_build(
            crashing, tiny_vit, [("x", 1), ("q", 2)], views, tmp_path / "b", batch_size=2, progress=False
        )
    partial = list((tmp_path / "b").glob("*.partial"))
    assert len(partial) == 1 and json.loads((partial[0] / "progress.json").read_text())["done_images"] == 2
    assert not [
        p for p in (tmp_path / "b").iterdir() if not p.name.endswith((".partial", ".lock"))
    ]  # nothing final yet
    crashing.crash_at = None
    resumed = FeatureCache.open_or_build(
        crashing, tiny_vit, [("x", 1), ("q", 2)], views, tmp_path / "b", batch_size=2, progress=False
    )
    for key in (("x", 1), ("q", 2)):
        assert torch.equal(resumed.tensor(key), reference.tensor(key))
    assert torch.equal(resumed.geometry, reference.geometry)
    assert np.array_equal(resumed.labels, reference.labels)
    assert resumed.num_views == 25 and resumed.grid == (4, 4)


@pytest.mark.slow
def test_concurrent_runs_build_one_cache_and_agree(tmp_path):
    config = synthetic_config(tmp_path / "c.yaml", train_images=40)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    runs = []
    for name in ("a", "b"):
        args = [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(config),
            *tiny_overrides(tmp_path / name),
            "--data.cache.dir",
            str(tmp_path / "cache"),
        ]
        runs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    logs = [p.communicate(timeout=600)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], logs
    assert sum("feature cache written" in log for log in logs) == 1, logs  # built once
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.partial"))
    reports = [json.loads((tmp_path / name / "run" / "eval" / "eval.json").read_text()) for name in ("a", "b")]
    assert reports[0]["readouts"] == reports[1]["readouts"]


def test_a_damaged_partial_cache_starts_again(tmp_path, tiny_vit, caplog):
    import numpy as np

    from ultra.data import FiveCropViews, SyntheticScenes
    from ultra.data.cache import FeatureCache

    class Crashing(SyntheticScenes):
        crash = True

        def __getitem__(self, index):
            if self.crash and index == 3:
                raise RuntimeError("simulated crash")
            return super().__getitem__(index)

    data, views = Crashing(5, 96, 4), FiveCropViews(64, 96)
    with pytest.raises(RuntimeError):
        FeatureCache.open_or_build(data, tiny_vit, [("x", 1)], views, tmp_path, batch_size=2, progress=False)
    partial = next(tmp_path.glob("*.partial"))
    truncate(partial / "x1.npy", keep=0.3)
    Crashing.crash = False
    with caplog.at_level("WARNING", logger="ultra"):
        cache = FeatureCache.open_or_build(data, tiny_vit, [("x", 1)], views, tmp_path, batch_size=2, progress=False)
    assert "is damaged" in caplog.text and "starting it again" in caplog.text
    reference = FeatureCache.open_or_build(
        SyntheticScenes(5, 96, 4), tiny_vit, [("x", 1)], views, tmp_path / "ref", progress=False
    )
    assert np.array_equal(cache.tensor(("x", 1)).numpy(), reference.tensor(("x", 1)).numpy())


def test_a_complete_cache_on_a_read_only_disk_is_read_without_a_lock(tmp_path, monkeypatch):
    """Reading a finished cache and its graphs needs no write: not even the lock file of a build."""
    import errno

    import ultra.data.cache
    import ultra.graphs.store

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=1), "--readout.probe", "false"]
    first = train_cli.run(args)

    def read_only(path, what):
        raise OSError(errno.EROFS, "Read-only file system", f"{path}.lock")

    monkeypatch.setattr(ultra.data.cache, "build_lock", read_only)
    monkeypatch.setattr(ultra.graphs.store, "build_lock", read_only)
    again = train_cli.run(args + ["--trainer.default_root_dir", str(tmp_path / "again")])
    assert again["readouts"]["head"]["miou"] == first["readouts"]["head"]["miou"]


def test_a_bad_training_image_is_named_before_the_cache_build_starts(tmp_path):
    """Found by a header check up front, not when the build reaches it (leaving a partial cache behind)."""
    from ultra.data import write_synthetic_folder

    write_synthetic_folder(tmp_path / "photos", 12, 96, 4)
    broken = sorted((tmp_path / "photos" / "images").iterdir())[9]
    broken.write_bytes(b"not a picture")
    config = synthetic_config(
        tmp_path / "c.yaml",
        train_dataset={
            "class_path": "ultra.data.ImageFolder",
            "init_args": {"root": str(tmp_path / "photos"), "classes": 4},
        },
    )
    with pytest.raises(DataError, match=rf"cannot read image {broken}"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--evaluation.run", "false"])
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_a_full_disk_is_one_clear_error_and_the_rerun_resumes(tmp_path, monkeypatch):
    """ENOSPC while reserving the cache (a bus error once its memory map was written), writing a graph and writing
    the inference checkpoint: one DiskFull naming the folder, nothing half-written left as complete, then a rerun."""
    import errno

    import ultra.files
    from ultra.errors import DiskFull

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=1), "--readout.probe", "false"]

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ultra.files.os, "posix_fallocate", no_space)
        with pytest.raises(DiskFull, match=r"the disk of .*cache/.*\.partial is full \(reserving the feature cache"):
            train_cli.run(args)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    import safetensors.torch

    save_file = safetensors.torch.save_file

    from safetensors import SafetensorError

    def no_space_for(name):  # safetensors' writer says so in its own error, not an OSError
        def save(tensors, path, *args, **kwargs):
            if name in str(path):
                raise SafetensorError(
                    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                    'device" })'
                )
            return save_file(tensors, path, *args, **kwargs)

        return save

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", no_space_for("xx2-"))
        with pytest.raises(DiskFull, match=r"the disk of .*graphs is full \(writing xx2-\w+.safetensors\)"):
            train_cli.run(args)
    assert not list((tmp_path / "cache").rglob("xx2-*.safetensors")) and not list((tmp_path / "cache").rglob("*.part"))
    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", no_space_for("model.safetensors"))
        with pytest.raises(DiskFull, match=r"the disk of .*run is full \(writing model.safetensors\)"):
            train_cli.run(args)
    assert not (tmp_path / "run" / "model.safetensors").exists() and not list((tmp_path / "run").glob(".*.part"))
    report = train_cli.run(args)  # space freed: the rerun resumes and finishes
    assert (tmp_path / "run" / "model.safetensors").is_file() and report["readouts"]["head"]["miou"] > 0


def test_an_unfinished_cache_of_an_older_version_of_the_images_is_removed(tmp_path):
    """A build stopped by a broken image leaves a partial cache; once the image is fixed (a new fingerprint), the
    new build replaces the old partial instead of leaving it for good."""
    from ultra.data import write_synthetic_folder

    write_synthetic_folder(tmp_path / "photos", 12, 96, 4)
    image = sorted((tmp_path / "photos" / "images").iterdir())[9]
    intact = image.read_bytes()
    image.write_bytes(intact[: len(intact) // 2])  # the header reads, the pixels do not
    config = synthetic_config(
        tmp_path / "c.yaml",
        train_dataset={
            "class_path": "ultra.data.ImageFolder",
            "init_args": {"root": str(tmp_path / "photos"), "classes": 4},
        },
    )
    args = [
        "--config",
        str(config),
        *tiny_overrides(tmp_path, epochs=1),
        "--evaluation.run",
        "false",
        "--readout.probe",
        "false",
    ]
    with pytest.raises(DataError, match=str(image.name)):
        train_cli.run(args)
    assert len(list((tmp_path / "cache").glob("*.partial"))) == 1
    image.write_bytes(intact)
    train_cli.run(args)
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_a_label_map_of_another_size_is_named_before_the_cache_build(tmp_path):

    from ultra.cli import train as train_cli
    from ultra.data import write_synthetic_folder

    write_synthetic_folder(tmp_path / "photos", 4, 96, 4)
    label = sorted((tmp_path / "photos" / "labels").iterdir())[2]
    Image.open(label).resize((48, 96)).save(label)
    config = synthetic_config(
        tmp_path / "c.yaml",
        train_dataset={
            "class_path": "ultra.data.ImageFolder",
            "init_args": {"root": str(tmp_path / "photos"), "classes": 4},
        },
    )
    with pytest.raises(DataError, match=rf"label map {label} is 48x96 px, its image .* 96x96"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--evaluation.run", "false"])
    assert not list((tmp_path / "cache").glob("*.partial"))
