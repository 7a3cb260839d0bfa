"""Reliability: no silent wrong result and no lost file (concurrent runs, file permissions, stale state)."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from helpers import REPO, sgd_overrides, synthetic_config, tiny_overrides

from ultra.errors import ConfigError
from ultra.files import atomic_path


def test_atomic_writes_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


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


def test_a_rerun_with_other_settings_is_refused_and_fresh_starts_over(tmp_path, caplog):
    from ultra.cli import train as train_cli
    from ultra.readout.checkpoint import read_checkpoint

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path), *sgd_overrides()]
    first = train_cli.run(args)
    model = tmp_path / "run" / "model.safetensors"
    before = model.read_bytes()
    for change, named in ((["--model.lr", "0.1"], "model.lr"), (["--model.out_dim", "6"], "model.out_dim")):
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
        "data.evaluation.resize",
        "data.val_dataset.init_args.seed",
        "data.cache.dir",
        "seed_everything",
    )
    assert not [key for key in inert if key in recorded]
    # the node batches' size and seed, and evaluation-only options, resume the exact run instead of refusing it
    changed = ["--data.batches.steps_per_epoch", "7", "--seed_everything", "4", "--data.evaluation.resize", "80"]
    with caplog.at_level("INFO", logger="ultra"):
        train_cli.run(args + changed)
    assert "resuming from" in caplog.text
    resumed = _head_tensors(tmp_path / "run" / "model.safetensors")
    assert resumed.keys() == head.keys() and all(torch.equal(resumed[k], head[k]) for k in head)
    with pytest.raises(ConfigError, match="other settings: data.knn.k_any"):
        train_cli.run(args + ["--data.knn.k_any", "5"])


def test_a_bad_validation_set_fails_before_training(tmp_path):
    import numpy as np
    from PIL import Image

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


def _head_tensors(path) -> dict:
    from ultra.readout.checkpoint import read_checkpoint

    return {k: v for k, v in read_checkpoint(path)[1].items() if k.startswith("head.head.")}


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_damaged_caches_graphs_and_checkpoints_are_rebuilt_or_refused(tmp_path, caplog):
    import numpy as np

    from ultra.cli import train as train_cli

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path)]
    reference = train_cli.run(args)
    cache = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    tokens = next(cache.glob("x*.npy"))
    original = np.load(tokens).copy()
    _truncate(tokens)
    graph = next((cache / "graphs").glob("feat*.safetensors"))
    _truncate(graph)
    with caplog.at_level("WARNING", logger="ultra"):
        again = train_cli.run(args + ["--fresh"])
    assert f"{tokens}" in caplog.text and "rebuilding the cache" in caplog.text
    assert again["readouts"] == reference["readouts"]
    assert np.array_equal(np.load(tokens), original)
    _truncate(graph)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ultra"):
        assert train_cli.run(args + ["--fresh"])["readouts"] == reference["readouts"]
    assert f"stored operator {graph} is damaged" in caplog.text
    _truncate(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"checkpoint .*last.ckpt is damaged"):
        train_cli.run(args)


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
    _truncate(partial / "x1.npy", keep=0.3)
    Crashing.crash = False
    with caplog.at_level("WARNING", logger="ultra"):
        cache = FeatureCache.open_or_build(data, tiny_vit, [("x", 1)], views, tmp_path, batch_size=2, progress=False)
    assert "is damaged" in caplog.text and "starting it again" in caplog.text
    reference = FeatureCache.open_or_build(
        SyntheticScenes(5, 96, 4), tiny_vit, [("x", 1)], views, tmp_path / "ref", progress=False
    )
    assert np.array_equal(cache.tensor(("x", 1)).numpy(), reference.tensor(("x", 1)).numpy())


def _picture(path, size=(64, 48)):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stride", "0"], "--stride must be >= 1"),
        (["--stride", "100"], "--stride 100 is larger than the 4x5 token grid of .*p.png"),
        (["--size", "0"], "--size must be a positive number"),
        (["--segments", "0"], "--segments must be >= 1"),
        (["--segments", "-3"], "--segments must be >= 1"),
        (["--distance_threshold", "-1"], r"--distance_threshold is a cosine distance in \[0, 2\]"),
    ],
)
def test_interpret_refuses_bad_arguments(tmp_path, extra, message):
    from ultra.cli import interpret

    image = _picture(tmp_path / "p.png")
    args = [
        str(image),
        "-o",
        str(tmp_path / "out"),
        "--backbone",
        "vit_tiny_patch16_224",
        "--weights",
        "random",
        "--size",
        "64",
    ]
    with pytest.raises(ValueError, match=message):
        interpret.run(args + extra)
    assert not (tmp_path / "out").exists()


def test_select_analyze_and_train_refuse_bad_arguments_early(tmp_path):
    from ultra.cli import analyze, select
    from ultra.cli import train as train_cli

    image = _picture(tmp_path / "p.png")
    for threshold in ("2", "1", "0", "half"):  # 1 passed the command's check and failed deep inside before
        with pytest.raises(ConfigError, match=r"threshold must be 'otsu' or a fraction in \(0, 1\)"):
            select.run([str(image), "--point", "3,3", "-o", str(tmp_path / "m.png"), "--threshold", threshold])
    with pytest.raises(ValueError, match="--size must be a positive number of pixels, got 0"):
        analyze.analyze(tmp_path, tmp_path / "a", size=0)
    config = synthetic_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="extra_clusters must be >= 0"):
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--readout.extra_clusters", "-30"])
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(PermissionError, match="cannot write to the output folder"):
        train_cli.run(
            ["--config", str(config), *tiny_overrides(tmp_path), "--trainer.default_root_dir", str(blocked / "run")]
        )
    assert not (tmp_path / "cache").exists()  # refused before the cache was built


def test_a_console_entry_tears_down_the_process_group_of_its_run(tmp_path):
    import torch.distributed as dist

    from ultra.cli import console

    def run(args):  # a run that, like a DDP one, leaves its process group behind
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        assert dist.is_initialized()

    console(run, "ultra-test")([])
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "error, one_line",
    [
        (ConfigError("--size must be >= 1, got 0"), True),
        (FileExistsError("1 output file(s) exist already"), True),
        (ValueError("an internal shape mismatch"), False),  # a bug: its traceback is kept
        (KeyError("features"), False),
    ],
)
def test_a_command_prints_a_users_mistake_in_one_line_and_keeps_a_bugs_traceback(error, one_line, capsys):
    from ultra.cli import console

    def run(args):
        raise error

    if one_line:
        with pytest.raises(SystemExit) as exit_info:
            console(run, "ultra-test")([])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"ultra-test: error: {error}\n"
    else:
        with pytest.raises(type(error)):
            console(run, "ultra-test")([])


def test_a_bug_in_a_real_command_reaches_the_user_with_its_traceback(tmp_path):
    """A bug raising ValueError inside ``ultra-eval`` is not dressed up as a user error (exit 1, a traceback)."""
    code = (
        "import sys, ultra.cli.evaluate as e\n"
        "def broken(*a, **k):\n    raise ValueError('internal shape mismatch')\n"
        "e.training_data_section = broken\n"
        "e.main(['--checkpoint', 'x.safetensors', '--config', 'c.yaml'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" in done.stderr and "internal shape mismatch" in done.stderr


def test_a_run_or_output_folder_in_use_by_another_command_is_refused(tmp_path):
    """Two commands writing into one folder would silently lose one's results: the second is refused at once."""
    from filelock import FileLock

    from ultra.cli import segment as segment_cli
    from ultra.cli import train as train_cli
    from ultra.errors import FolderInUse
    from ultra.files import LOCK_NAME

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=1), "--readout.probe", "false"]
    (tmp_path / "run").mkdir()
    with FileLock(tmp_path / "run" / LOCK_NAME):  # held as another process would
        with pytest.raises(
            FolderInUse, match=r"run is in use by another command .* choose another --trainer.default_root_dir"
        ):
            train_cli.run(args)
        with pytest.raises(FolderInUse, match="run is in use"):
            train_cli.run(args + ["--seeds", "0,1"])
    assert not (tmp_path / "run" / "checkpoints").exists()
    train_cli.run(args)  # free again
    (tmp_path / "out").mkdir()
    torch.manual_seed(0)
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray((torch.rand(64, 80, 3) * 255).byte().numpy()).save(photo)
    segment = [str(tmp_path / "run" / "model.safetensors"), str(photo), "-o", str(tmp_path / "out")]
    with FileLock(tmp_path / "out" / LOCK_NAME):
        with pytest.raises(FolderInUse, match=r"out is in use by another command .* choose another --output"):
            segment_cli.run(segment)
    assert not (tmp_path / "out" / "p.png").exists()
    assert [p.name for p in segment_cli.run(segment)] == ["p.png"]


def test_a_complete_cache_on_a_read_only_disk_is_read_without_a_lock(tmp_path, monkeypatch):
    """Reading a finished cache and its graphs needs no write: not even the lock file of a build."""
    import errno

    import ultra.data.cache
    import ultra.graphs.store
    from ultra.cli import train as train_cli

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
    from ultra.cli import train as train_cli
    from ultra.data import write_synthetic_folder
    from ultra.errors import DataError

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
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--readout.evaluate", "false"])
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_a_full_disk_is_one_clear_error_and_the_rerun_resumes(tmp_path, monkeypatch):
    """ENOSPC while reserving the cache (a bus error once its memory map was written), writing a graph and writing
    the inference checkpoint: one DiskFull naming the folder, nothing half-written left as complete, then a rerun."""
    import errno

    import ultra.files
    from ultra.cli import train as train_cli
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

    def no_space_for(name):
        def save(tensors, path, *args, **kwargs):
            if name in str(path):
                no_space()
            return save_file(tensors, path, *args, **kwargs)

        return save

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", no_space_for("feat2-"))
        with pytest.raises(DiskFull, match=r"the disk of .*graphs is full \(writing feat2-\w+.safetensors\)"):
            train_cli.run(args)
    assert not list((tmp_path / "cache").rglob("feat2-*.safetensors")) and not list(
        (tmp_path / "cache").rglob("*.part")
    )
    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", no_space_for("model.safetensors"))
        with pytest.raises(DiskFull, match=r"the disk of .*run is full \(writing model.safetensors\)"):
            train_cli.run(args)
    assert not (tmp_path / "run" / "model.safetensors").exists() and not list((tmp_path / "run").glob(".*.part"))
    report = train_cli.run(args)  # space freed: the rerun resumes and finishes
    assert (tmp_path / "run" / "model.safetensors").is_file() and report["readouts"]["head"]["miou"] > 0


def test_temporary_files_of_killed_writes_are_cleared_by_the_next_run(tmp_path):
    """A kill between an atomic write's start and its rename leaves a hidden .part file; the next run removes it."""
    from ultra.cli import train as train_cli

    config = synthetic_config(tmp_path / "c.yaml")
    args = ["--config", str(config), *tiny_overrides(tmp_path, epochs=1), "--readout.probe", "false"]
    train_cli.run(args)
    graph = next((tmp_path / "cache").rglob("feat2-*.safetensors"))
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


def test_an_unfinished_cache_of_an_older_version_of_the_images_is_removed(tmp_path):
    """A build stopped by a broken image leaves a partial cache; once the image is fixed (a new fingerprint), the
    new build replaces the old partial instead of leaving it for good."""
    from ultra.cli import train as train_cli
    from ultra.data import write_synthetic_folder
    from ultra.errors import DataError

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
        "--readout.evaluate",
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
    from PIL import Image

    from ultra.cli import train as train_cli
    from ultra.data import write_synthetic_folder
    from ultra.errors import DataError

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
        train_cli.run(["--config", str(config), *tiny_overrides(tmp_path), "--readout.evaluate", "false"])
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_try_lock_takes_a_free_lock_and_refuses_a_held_one(tmp_path):
    from ultra.files import try_lock

    first = try_lock(tmp_path / "x.lock")
    assert first is not None and first.is_locked
    held = subprocess.run(
        [sys.executable, "-c", f"from ultra.files import try_lock; print(try_lock({str(tmp_path / 'x.lock')!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert held.stdout.strip() == "None"  # another process sees it held
    first.release()
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from ultra.files import try_lock; print(try_lock({str(tmp_path / 'x.lock')!r}) is not None)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.strip() == "True"
