"""``eval.py`` / ``ultra-eval``: the evaluation protocol for an inference checkpoint.

    python eval.py --checkpoint runs/demo/model.safetensors --config configs/demo.yaml [--crf] [--flip]
    python eval.py --checkpoint runs/camvid/model.safetensors --dataset ImageFolder --dataset.root DIR --dataset.split test

The data set is ``--dataset`` (a class name or path and its arguments) or the ``data.val_dataset``
of a training config given as ``--config`` (with its ``data.evaluation`` geometry; the config's
other settings do not apply to an evaluation). Prints the table of every readout of the
checkpoint (head, raw-token baseline, probe), and writes ``eval.json`` (with what was evaluated:
the data set's class, arguments and fingerprint), confusion matrices and an example sheet to
``--output`` (default: ``eval-<data set class>-<fingerprint>`` beside the checkpoint, so two data
sets never share a folder). An existing report is replaced only with ``--overwrite``.
``--strategy ddp --devices N`` spreads the images over processes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from jsonargparse import ArgumentParser

from ..data import cityscapes, cocostuff, folder, synthetic  # noqa: F401  (their classes are --dataset choices)
from ..data.base import SegmentationDataset
from ..data.transforms import EvalConfig, check_eval_geometry
from ..errors import ConfigError, UserError
from ..evaluation.protocol import evaluate
from ..files import refuse_overwrite, require_writable
from ..readout.checkpoint import load
from ..readout.crf import require_crf
from . import console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="inference checkpoint (model.safetensors)")
    parser.add_subclass_arguments(SegmentationDataset, "dataset", required=False,
                                  help="data set to evaluate (e.g. CocoStuff27, Cityscapes27, ImageFolder)")
    parser.add_argument("--config", type=Path | None, default=None,
                        help="a training config: its data.val_dataset and data.evaluation are used")
    parser.add_argument("--output", type=Path | None, default=None, help="report folder (default: beside the checkpoint)")
    parser.add_argument("--resize", type=int | None, default=None,
                        help=f"protocol: shorter side in pixels (default: the config's data.evaluation, else {EvalConfig.resize})")
    parser.add_argument("--crop", type=int | None, default=None,
                        help=f"protocol: centre crop in pixels (default: the config's data.evaluation, else {EvalConfig.crop})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --output")
    parser.add_argument("--crf", action="store_true", help="also report every readout after a dense CRF")
    parser.add_argument("--flip", action="store_true", help="average predictions with the mirrored image")
    parser.add_argument("--batch_size", type=int, default=4, help="images per batch")
    parser.add_argument("--num_workers", type=int, default=0, help="data loader workers")
    parser.add_argument("--accelerator", type=str, default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument("--devices", type=Any, default=1, help="Lightning devices (a number or a list)")
    parser.add_argument("--strategy", type=str, default="auto", help="Lightning strategy (ddp spreads the images)")
    return parser


def training_data_section(config: Path) -> dict:
    """The ``data`` section of a training config (a LightningCLI YAML file)."""
    try:
        tree = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {config} is not a readable YAML file: {err}") from None
    data = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {config} has no data section (a training config has one)")
    return data.get("init_args", data)


def run(args: list[str] | None = None) -> dict:
    """Evaluate; returns the report."""
    parser = build_parser()
    args = sys.argv[1:] if args is None else list(args)
    cfg = parser.parse_args(args)
    data = training_data_section(cfg.config) if cfg.config else {}
    if cfg.dataset is None:
        if not data.get("val_dataset"):
            raise ConfigError("give --dataset, or a --config whose data section has a val_dataset")
        cfg = parser.parse_args([*args, "--dataset", json.dumps(data["val_dataset"])])
    if cfg.crf:
        require_crf("--crf")
    try:
        dataset: SegmentationDataset = parser.instantiate(cfg).dataset
    except ValueError as err:  # jsonargparse wraps the data set's own error: the user's mistake is that one
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
    geometry = EvalConfig(**data.get("evaluation", {}))
    resize = geometry.resize if cfg.resize is None else cfg.resize
    crop = geometry.crop if cfg.crop is None else cfg.crop
    check_eval_geometry(resize, crop, "--resize" if cfg.resize is not None else "the config's evaluation.resize",
                        "--crop" if cfg.crop is not None else "the config's evaluation.crop")
    fingerprint = dataset.fingerprint()
    output = cfg.output or Path(cfg.checkpoint).parent / f"eval-{type(dataset).__name__}-{fingerprint[:8]}"
    refuse_overwrite([output / "eval.json"], cfg.overwrite)
    created = not output.exists()
    require_writable(output)
    try:
        return _evaluate(cfg, dataset, resize, crop, fingerprint, output)
    except BaseException:
        if created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # a failed evaluation leaves no empty report folder behind
        raise


def _evaluate(cfg, dataset: SegmentationDataset, resize: int, crop: int, fingerprint: str, output: Path) -> dict:
    segmenter = load(cfg.checkpoint)
    if list(segmenter.class_names) != list(dataset.classes):
        differ = next((i for i, (a, b) in enumerate(zip(segmenter.class_names, dataset.classes)) if a != b),
                      min(len(segmenter.class_names), dataset.num_classes))
        raise ConfigError(f"the data set's classes are not the checkpoint's: {dataset.num_classes} vs "
                          f"{len(segmenter.class_names)} classes, first difference at id {differ} "
                          f"({_name(dataset.classes, differ)} here, {_name(segmenter.class_names, differ)} in the checkpoint); "
                          f"the probe and the matching would score the wrong classes")
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    described = {"class_path": f"{type(dataset).__module__}.{type(dataset).__name__}",
                 "init_args": json.loads(json.dumps(_plain(cfg.dataset).get("init_args", {}), default=str)),
                 "fingerprint": fingerprint}
    return evaluate(segmenter, dataset.with_transform(EvalConfig(resize, crop).transform()), trainer, output=output,
                    flip=cfg.flip, crf=cfg.crf, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                    settings={"checkpoint": str(cfg.checkpoint), "dataset": described, "eval_resize": resize,
                              "eval_crop": crop})


def _name(classes, index: int) -> str:
    return repr(classes[index]) if index < len(classes) else "none"


def _plain(value) -> dict:
    return value.as_dict() if hasattr(value, "as_dict") else dict(value)


main = console(run, "ultra-eval")
