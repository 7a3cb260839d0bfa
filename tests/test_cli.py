"""What every command shares: one-line user errors, tracebacks for bugs, early refusal of bad arguments,
folder locks."""

import subprocess
import sys

import pytest
import torch
from helpers import synthetic_config, tiny_overrides

from ultra.errors import ConfigError


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
        "e.training_evaluation = broken\n"
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
    segment = ["--checkpoint", str(tmp_path / "run" / "model.safetensors"), str(photo), "-o", str(tmp_path / "out")]
    with FileLock(tmp_path / "out" / LOCK_NAME):
        with pytest.raises(FolderInUse, match=r"out is in use by another command .* choose another --output"):
            segment_cli.run(segment)
    assert not (tmp_path / "out" / "p.png").exists()
    assert [p.name for p in segment_cli.run(segment)] == ["p.png"]
