"""An inference checkpoint evaluated on a data set: the checks before any work, the report folder, the protocol.

What ``ultra-eval`` runs once its command line is parsed: every label of the data set is read and
checked first, the data set's classes must be the checkpoint's, the report goes to
``eval-<data set class>-<fingerprint>`` beside the checkpoint unless told otherwise, an existing report
is replaced only when asked, and a failed evaluation leaves no empty report folder behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytorch_lightning as pl

from ..data.base import SegmentationDataset
from ..data.transforms import EvalConfig
from ..errors import ConfigError
from ..files import LOCK_NAME, folder_lock, refuse_overwrite, require_writable
from ..readout.checkpoint import load
from ..readout.segmenter import Segmenter
from .protocol import evaluate, report_files


def default_report_folder(checkpoint: Path, dataset: SegmentationDataset) -> Path:
    """``eval-<data set class>-<fingerprint>`` beside the checkpoint: two data sets never share a folder."""
    return Path(checkpoint).parent / f"eval-{type(dataset).__name__}-{dataset.fingerprint()[:8]}"


def check_same_classes(segmenter: Segmenter, dataset: SegmentationDataset) -> None:
    """Refuse a data set whose class list is not the checkpoint's (the probe and the matching would score the wrong
    classes), naming the first difference."""
    ours, theirs = list(dataset.classes), list(segmenter.class_names)
    if ours == theirs:
        return
    differ = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    name = lambda classes: repr(classes[differ]) if differ < len(classes) else "none"  # noqa: E731
    raise ConfigError(
        f"the data set's classes are not the checkpoint's: {len(ours)} vs {len(theirs)} classes, first difference "
        f"at id {differ} ({name(ours)} here, {name(theirs)} in the checkpoint); the probe and the matching would "
        f"score the wrong classes"
    )


def evaluate_checkpoint(
    checkpoint: Path,
    dataset: SegmentationDataset,
    geometry: EvalConfig,
    output: Path,
    trainer: pl.Trainer,
    overwrite: bool = False,
    weights: str | None = None,
    precision: str = "auto",
    described: dict | None = None,
    **protocol,
) -> dict:
    """Evaluate the checkpoint on ``dataset`` (untransformed; ``geometry`` is applied) into the report folder
    ``output``; ``weights``: the backbone's (default: the checkpoint's own); ``precision``: its arithmetic;
    ``protocol`` goes to :func:`~ultra.evaluation.protocol.evaluate` (flip, crf, batch_size, ...)."""
    created = not output.exists()
    require_writable(output)
    try:  # one evaluation per folder: the other processes of a multi-process run are covered by the first one's lock
        with folder_lock(output, "--output", held=trainer.is_global_zero):
            refuse_overwrite([output / "eval.json", *report_files(output)], overwrite)  # every file it would replace
            dataset.check(require_labels=True)  # every label read once: a bad file or a wrong layout, before any work
            segmenter = load(checkpoint, weights=weights, precision=precision)
            check_same_classes(segmenter, dataset)
            settings = {
                "checkpoint": str(checkpoint),
                "dataset": described or {},
                "eval_resize": geometry.resize,
                "eval_crop": geometry.crop,
                "backbone": segmenter.backbone.describe(trainer.strategy.root_device),  # as a training run records it
            }
            return evaluate(
                segmenter,
                dataset.with_transform(geometry.transform()),
                trainer,
                output=output,
                settings=settings,
                **protocol,
            )
    except BaseException:
        if created and output.is_dir() and {p.name for p in output.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(output)  # a failed evaluation leaves no empty report folder behind
        raise


def describe_dataset(dataset: SegmentationDataset, init_args: dict) -> dict:
    """What was evaluated, for the report: the data set's class, its arguments and its fingerprint."""
    return {
        "class_path": f"{type(dataset).__module__}.{type(dataset).__name__}",
        "init_args": json.loads(json.dumps(init_args, default=str)),
        "fingerprint": dataset.fingerprint(),
    }
