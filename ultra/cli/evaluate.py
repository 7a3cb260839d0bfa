"""``eval.py`` / ``ultra-eval``: the evaluation protocol for an inference checkpoint.

    python eval.py --checkpoint runs/demo/model.safetensors --config configs/demo.yaml [--crf true] [--flip true]

The data set is the ``data.val_dataset`` of a training config (its other sections are ignored)
or ``--dataset`` (a class path and its arguments). Prints the table of every readout of the
checkpoint (head, raw-token baseline, probe), and writes ``eval.json`` (with what was evaluated:
the data set's class, arguments and fingerprint), confusion matrices and an example sheet to
``--output`` (default: ``eval-<data set class>-<fingerprint>`` beside the checkpoint, so two data
sets never share a folder). An existing report is replaced only with ``--overwrite``.
``--strategy ddp --devices N`` spreads the images over processes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import ActionConfigFile, ArgumentParser

from . import console, refuse_overwrite, require_writable
from ..readout.crf import require_crf
from ..data.base import SegmentationDataset
from ..data.transforms import EvalTransform
from ..evaluation.protocol import evaluate
from ..readout.checkpoint import load


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a training config; its data.val_dataset is evaluated")
    parser.add_argument("--checkpoint", type=Path, required=True, help="inference checkpoint (model.safetensors)")
    parser.add_subclass_arguments(SegmentationDataset, "dataset", required=False, help="data set to evaluate")
    parser.add_argument("--output", type=Path | None, default=None, help="report folder (default: beside the checkpoint)")
    parser.add_argument("--eval_resize", type=int | None, default=None, help="shorter side (default: the config's, else 320)")
    parser.add_argument("--eval_crop", type=int | None, default=None, help="centre crop (default: the config's, else 320)")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing report in --output")
    parser.add_argument("--crf", type=bool, default=False, help="also report every readout after a dense CRF")
    parser.add_argument("--flip", type=bool, default=False, help="average predictions with the mirrored image")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--accelerator", type=str, default="auto")
    parser.add_argument("--devices", type=Any, default=1)
    parser.add_argument("--strategy", type=str, default="auto")
    for ignored in ("model", "trainer", "readout", "seed_everything"):
        parser.add_argument(f"--{ignored}", type=Any, default=None, help="(from a training config; ignored)")
    parser.add_argument("--data", type=dict | None, default=None, help="(from a training config; its val_dataset is used)")
    return parser


def run(args: list[str] | None = None) -> dict:
    """Evaluate; returns the report."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    data = cfg.data or {}
    data = data.get("init_args", data)
    if cfg.dataset is None and not data.get("val_dataset"):
        parser.error("give --dataset or a --config whose data section has a val_dataset")
    if cfg.dataset is None:
        cfg.dataset = data["val_dataset"]
    if cfg.crf:
        require_crf("--crf")
    dataset: SegmentationDataset = parser.instantiate_classes(cfg).dataset
    resize = cfg.eval_resize or data.get("eval_resize", 320)
    crop = cfg.eval_crop or data.get("eval_crop", 320)
    fingerprint = dataset.fingerprint()
    output = cfg.output or Path(cfg.checkpoint).parent / f"eval-{type(dataset).__name__}-{fingerprint[:8]}"
    refuse_overwrite([output / "eval.json"], cfg.overwrite)
    require_writable(output)
    segmenter = load(cfg.checkpoint)
    if len(segmenter.class_names) != dataset.num_classes:
        parser.error(f"the checkpoint knows {len(segmenter.class_names)} classes, the data set has {dataset.num_classes}")
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    described = {"class_path": f"{type(dataset).__module__}.{type(dataset).__name__}",
                 "init_args": json.loads(json.dumps(_plain(cfg.dataset).get("init_args", {}), default=str)),
                 "fingerprint": fingerprint}
    return evaluate(segmenter, dataset.with_transform(EvalTransform(resize, crop)), trainer, output=output, flip=cfg.flip,
                    crf=cfg.crf, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                    settings={"checkpoint": str(cfg.checkpoint), "dataset": described, "eval_resize": resize,
                              "eval_crop": crop})


def _plain(value) -> dict:
    return value.as_dict() if hasattr(value, "as_dict") else dict(value)


main = console(run, "ultra-eval")
