"""``ultra-eval``: it reproduces the training report, guards its reports and refuses what it cannot evaluate."""

import json

import pytest
from helpers import realdata

from ultra.cli import evaluate as eval_cli
from ultra.errors import ConfigError, DataError, FolderInUse
from ultra.files import LOCK_NAME


def test_eval_command_reproduces_the_training_report(trained):
    root, config, report = trained
    again = eval_cli.run(
        [
            "--checkpoint",
            str(root / "run" / "model.safetensors"),
            "--config",
            str(config),
            "--resize",
            "64",
            "--crop",
            "64",
            "--output",
            str(root / "eval2"),
        ]
    )
    for name in ("head", "raw", "raw_centred", "raw_whitened", "probe"):
        assert again["readouts"][name]["miou"] == pytest.approx(report["readouts"][name]["miou"])
    assert again["best_baseline"] == report["best_baseline"]
    assert (root / "eval2" / "eval.json").is_file()


def test_eval_reports_are_guarded_named_by_data_set_and_say_what_was_evaluated(trained, tmp_path):
    root, config, _ = trained
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--resize", "64", "--crop", "64"]
    sets = [
        {
            "class_path": "ultra.data.SyntheticScenes",
            "init_args": {"num_images": 2, "size": 96, "num_classes": 4, "seed": s},
        }
        for s in (5, 6)
    ]
    reports = [eval_cli.run(args + ["--dataset", json.dumps(d)]) for d in sets]
    folders = sorted((root / "run").glob("eval-SyntheticScenes-*"))
    assert len(folders) == 2  # one folder per data set
    assert reports[0]["settings"]["dataset"]["init_args"]["seed"] == 5
    assert (
        json.loads((folders[0] / "eval.json").read_text())["settings"]["dataset"]["class_path"]
        == "ultra.data.synthetic.SyntheticScenes"
    )
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        eval_cli.run(args + ["--dataset", json.dumps(sets[0])])
    again = eval_cli.run(args + ["--dataset", json.dumps(sets[0]), "--overwrite"])
    assert again["readouts"] == reports[0]["readouts"]
    # the data set's class by its short name, its arguments as options: the same images, the same report
    by_name = eval_cli.run(
        args
        + [
            "--dataset",
            "SyntheticScenes",
            "--dataset.num_images",
            "2",
            "--dataset.size",
            "96",
            "--dataset.num_classes",
            "4",
            "--dataset.seed",
            "5",
            "--overwrite",
        ]
    )
    assert by_name["readouts"] == reports[0]["readouts"]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(PermissionError, match="cannot write to the output folder .*file/x"):
        eval_cli.run(args + ["--dataset", json.dumps(sets[0]), "--output", str(not_a_folder / "x")])


def test_eval_command_refuses_what_it_cannot_evaluate(trained, tmp_path):
    root, _, _ = trained
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--output", str(tmp_path / "e")]
    with pytest.raises(ConfigError, match="give --dataset, or a --config whose data section has a val_dataset"):
        eval_cli.run(args)
    (tmp_path / "broken.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml is not a readable YAML file"):
        eval_cli.run(args + ["--config", str(tmp_path / "broken.yaml")])
    (tmp_path / "nodata.yaml").write_text("model: {out_dim: 8}\n")
    with pytest.raises(ConfigError, match="nodata.yaml has no data section"):
        eval_cli.run(args + ["--config", str(tmp_path / "nodata.yaml")])
    three = {"class_path": "ultra.data.SyntheticScenes", "init_args": {"num_images": 2, "size": 96, "num_classes": 3}}
    with pytest.raises(
        ConfigError,
        match=r"the data set's classes are not the checkpoint's: 3 vs 4 classes, first "
        r"difference at id 1 \('thing_1' here, 'stuff_1' in the checkpoint\)",
    ):
        eval_cli.run(args + ["--dataset", json.dumps(three)])


def test_eval_refuses_cocostuff_labels_in_the_coarse_layout_before_any_work(trained, tmp_path):
    """Coarse ids (0-26) read as fine ids would be merged again and scored against the wrong classes, exit 0."""
    root, _, _ = trained
    real = realdata("cocostuff-mini/cocostuff")
    coarse_root = tmp_path / "coco"
    coarse_root.mkdir()
    for part, target in (("images", "images"), ("curated", "curated"), ("coarse27", "annotations")):
        (coarse_root / target).symlink_to(real / part)
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--output", str(tmp_path / "e")]
    with pytest.raises(DataError, match="label_layout='coarse'"):
        eval_cli.run(args + ["--dataset", "CocoStuff27", "--dataset.root", str(coarse_root)])
    assert not (tmp_path / "e").exists()
    # said to be coarse, the set gets as far as the checkpoint (whose classes are not COCO's)
    with pytest.raises(ConfigError, match="classes are not the checkpoint's"):
        eval_cli.run(
            args + ["--dataset", "CocoStuff27", "--dataset.root", str(coarse_root), "--dataset.label_layout", "coarse"]
        )


def test_an_evaluation_folder_is_locked_and_holds_one_report(trained, tmp_path):
    from filelock import FileLock

    root, _, _ = trained
    out = tmp_path / "e"
    scenes = {"class_path": "ultra.data.SyntheticScenes", "init_args": {"num_images": 2, "size": 96, "num_classes": 4}}
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--dataset", json.dumps(scenes)]
    args += ["--resize", "64", "--crop", "64", "--output", str(out)]
    out.mkdir()
    with FileLock(out / LOCK_NAME):  # another evaluation into the same folder
        with pytest.raises(FolderInUse, match=r"e is in use by another command .* choose another --output"):
            eval_cli.run(args)
    assert not (out / "eval.json").exists()
    eval_cli.run(args)
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert "confusion_head.png" in pictures and "examples.png" in pictures
    (out / "confusion_gone.png").write_bytes(b"a readout of an earlier report")
    eval_cli.run([*args, "--overwrite"])
    assert sorted(p.name for p in out.glob("*.png")) == pictures  # the earlier report's files are gone


def test_eval_never_replaces_a_picture_in_its_output_without_overwrite(trained, tmp_path):
    root, _, _ = trained
    out = tmp_path / "images"
    out.mkdir()
    photo = out / "examples.png"
    photo.write_bytes(b"the user's own picture")
    scenes = {"class_path": "ultra.data.SyntheticScenes", "init_args": {"num_images": 2, "size": 96, "num_classes": 4}}
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--dataset", json.dumps(scenes)]
    with pytest.raises(FileExistsError, match=r"examples.png.*pass --overwrite"):
        eval_cli.run([*args, "--resize", "64", "--crop", "64", "--output", str(out)])
    assert photo.read_bytes() == b"the user's own picture"


def test_eval_composes_training_configs_and_reads_their_evaluation_section(trained, tmp_path):
    """``--config`` goes through the training parser: a second config's ``evaluation`` group applies, and the
    options given here override it."""
    root, config, _ = trained
    (tmp_path / "eval.yaml").write_text("evaluation: {resize: 80, crop: 64, batch_size: 2}\n")
    args = ["--checkpoint", str(root / "run" / "model.safetensors"), "--config", str(config)]
    args += ["--config", str(tmp_path / "eval.yaml"), "--output", str(tmp_path / "e")]
    report = eval_cli.run(args)
    assert (report["settings"]["eval_resize"], report["settings"]["eval_crop"]) == (80, 64)
    assert report["settings"]["backbone"]["precision"] == "fp32"  # the suite's backbone arithmetic, recorded
    again = eval_cli.run([*args, "--resize", "72", "--overwrite"])
    assert (again["settings"]["eval_resize"], again["settings"]["eval_crop"]) == (72, 64)
