"""``eval.py`` / ``ultra-eval``: the evaluation protocol for an inference checkpoint.

    python eval.py --checkpoint runs/demo/model.safetensors --config configs/demo.yaml [--crf] [--flip]
    python eval.py --checkpoint CK --config configs/cityscapes27.yaml --config configs/backbones/dino_vitb8.yaml
    python eval.py --checkpoint CHECKPOINT --dataset ImageFolder --dataset.root DIR --dataset.split test

The data set is ``--dataset`` (a class name or path and its arguments) or the ``data.val_dataset``
of a training config given as ``--config`` (repeatable: composed as ``train.py`` composes them, through its
parser; its ``evaluation`` group gives the geometry and the options, which the options here override; the config's
other settings do not apply to an evaluation). Prints the table of every readout of the
checkpoint (head, raw-token baseline, probe), and writes ``eval.json`` (with what was evaluated:
the data set's class, arguments and fingerprint), confusion matrices and an example sheet to
``--output`` (default: ``eval-<data set class>-<fingerprint>`` beside the checkpoint, so two data
sets never share a folder). An existing report is replaced only with ``--overwrite``.
``--trainer.*`` are ``ultra-train``'s (``--trainer.strategy ddp --trainer.devices N`` spreads the images over
processes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
from jsonargparse import ArgumentParser

from ..data import cityscapes, cocostuff, folder, synthetic  # noqa: F401  (their classes are --dataset choices)
from ..data.base import SegmentationDataset
from ..data.transforms import EvalConfig, check_eval_geometry
from ..errors import ConfigError, user_errors_unwrapped
from ..evaluation.checkpoint_report import default_report_folder, describe_dataset, evaluate_checkpoint
from ..readout.crf import require_crf
from ..training.config import take_configs, training_evaluation
from . import WEIGHTS_HELP, add_precision_argument, console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="inference checkpoint (model.safetensors)")
    parser.add_subclass_arguments(
        SegmentationDataset,
        "dataset",
        required=False,
        help="data set to evaluate (e.g. CocoStuff27, Cityscapes27, ImageFolder)",
    )
    parser.add_argument(
        "--config",
        type=Path | None,
        default=None,
        help="a training config (repeatable, composed as train.py composes them): its data.val_dataset and "
        "evaluation group are used",
    )
    parser.add_argument(
        "--output", type=Path | None, default=None, help="report folder (default: beside the checkpoint)"
    )
    parser.add_argument(
        "--resize",
        type=int | None,
        default=None,
        help=f"protocol: shorter side in pixels (default: the config's evaluation.resize, else {EvalConfig.resize})",
    )
    parser.add_argument(
        "--crop",
        type=int | None,
        default=None,
        help=f"protocol: centre crop in pixels (default: the config's evaluation.crop, else {EvalConfig.crop})",
    )
    parser.add_argument("--weights", type=str | None, default=None, help=WEIGHTS_HELP)
    add_precision_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --output")
    parser.add_argument("--crf", action="store_true", help="also report every readout after a dense CRF")
    parser.add_argument("--flip", action="store_true", help="average predictions with the mirrored image")
    parser.add_argument("--batch_size", type=int | None, default=None, help="images per batch (default: the config's)")
    parser.add_argument("--num_workers", type=int, default=0, help="data loader workers")
    parser.add_class_arguments(pl.Trainer, "trainer", fail_untyped=False, sub_configs=True)
    parser.set_defaults(
        {"trainer.logger": False, "trainer.enable_checkpointing": False, "trainer.enable_model_summary": False}
    )
    return parser


def run(args: list[str] | None = None) -> dict:
    """Evaluate; returns the report."""
    parser = build_parser()
    configs, args = take_configs(sys.argv[1:] if args is None else list(args))
    cfg = parser.parse_args(args)
    val_dataset, configured = training_evaluation(configs)
    if cfg.dataset is None:
        if not val_dataset:
            raise ConfigError("give --dataset, or a --config whose data section has a val_dataset")
        cfg = parser.parse_args([*args, "--dataset", json.dumps(val_dataset)])
    crf, flip = cfg.crf or configured.crf, cfg.flip or configured.flip
    if crf:
        require_crf("--crf" if cfg.crf else "the config's evaluation.crf")
    with user_errors_unwrapped():  # the data set's own error, not jsonargparse's wrapper
        built = parser.instantiate(cfg)
    dataset: SegmentationDataset = built.dataset
    resize = configured.resize if cfg.resize is None else cfg.resize
    crop = configured.crop if cfg.crop is None else cfg.crop
    check_eval_geometry(
        resize,
        crop,
        "--resize" if cfg.resize is not None else "the config's evaluation.resize",
        "--crop" if cfg.crop is not None else "the config's evaluation.crop",
    )
    plain = cfg.dataset.as_dict() if hasattr(cfg.dataset, "as_dict") else dict(cfg.dataset)
    init_args = plain.get("init_args", {})
    return evaluate_checkpoint(
        cfg.checkpoint,
        dataset,
        EvalConfig(resize, crop),
        cfg.output or default_report_folder(cfg.checkpoint, dataset),
        built.trainer,
        overwrite=cfg.overwrite,
        weights=cfg.weights,
        precision=cfg.precision,
        described=describe_dataset(dataset, init_args),
        flip=flip,
        crf=crf,
        batch_size=configured.batch_size if cfg.batch_size is None else cfg.batch_size,
        num_workers=cfg.num_workers,
    )


main = console(run, "ultra-eval")
