"""One training run: checks, fit (resuming if possible), readouts, export, evaluation; or one run per seed.

:func:`train` is what ``train.py`` / ``ultra-train`` call with the command line; :func:`run_training` runs
a parsed config (:func:`~ultra.training.config.parse_training`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..data.transforms import EvalConfig
from ..evaluation.protocol import evaluate
from ..evaluation.seeds import format_summary, summarize
from ..files import atomic_path, folder_lock, remove_stale_parts, require_writable
from ..head.datamodule import HeadDataModule
from ..head.module import HeadModule
from ..readout.checkpoint import save_segmenter
from ..readout.crf import require_crf
from ..readout.fit import ReadoutConfig, fit_readouts
from ..readout.segmenter import Segmenter
from ..readout.self_training import SelfTrainingConfig, self_trained_head
from .config import TrainingCLI, parse_training, split_seeds_argument
from .run_folder import AtomicCheckpointIO, check_resumable, resume_point, run_settings

log = logging.getLogger(__name__)


def fit_head(trainer: pl.Trainer, module: HeadModule, data: HeadDataModule, ckpt_path: str | None = None) -> None:
    """``trainer.fit`` of a head module (Lightning's note that the exact solver has no optimizer is expected)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` returned `None`")
        trainer.fit(module, data, ckpt_path=ckpt_path)


def run_training(cli: TrainingCLI) -> dict | None:
    """Checks, then (in the locked run folder) fit, resuming if possible, readouts, evaluation and export; returns
    the evaluation report."""
    trainer, data = cli.trainer, cli.datamodule
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    config = ReadoutConfig(**cli.config.readout)
    self_training = SelfTrainingConfig(**cli.config.self_training)
    evaluation = EvalConfig(**cli.config.evaluation)
    if evaluation.crf:  # fail before training, not after it
        require_crf("--evaluation.crf")
    config.check_clusters(len(data.class_names), data.num_training_tokens)
    self_training.check_clusters(len(data.class_names) + config.extra_clusters)
    self_training.check_head(cli.model.head)
    root = Path(trainer.default_root_dir)
    require_writable(root)
    if evaluation.run and data.val_dataset is not None:  # a bad validation set fails now, not after training
        data.val_dataset.check(require_labels=True)
    # one run per folder: the other processes of a multi-process run are covered by the first one's lock
    with folder_lock(root, "--trainer.default_root_dir", held=trainer.is_global_zero):
        return _train(cli, config, self_training, evaluation, root)


def _train(
    cli: TrainingCLI, config: ReadoutConfig, self_training: SelfTrainingConfig, evaluation: EvalConfig, root: Path
) -> dict | None:
    """The run itself (its folder checked and locked): fit, readouts, export, evaluation."""
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    if trainer.is_global_zero:  # what a killed write of this folder left
        for folder in (root, root / "checkpoints", root / "eval"):
            remove_stale_parts(folder)
    random_batches = module.node_order == "random"
    ckpt_path = resume_point(trainer, run_settings(cli.config, module), bool(cli.config.fresh), random_batches)
    seed = int(cli.config.seed_everything) if cli.config.seed_everything is not None else 0
    pl.seed_everything(seed, workers=True, verbose=False)  # again: building the backbone may have drawn random numbers
    start = time.perf_counter()
    fit_head(trainer, module, data, ckpt_path)
    timings = {"fit_s": time.perf_counter() - start - sum(data.timings.values()), **data.timings}
    segmenter, rounds = fitted_segmenter(cli, config, self_training, seed, timings, evaluation.resize)
    # saved before the evaluation, saved again with its matching
    export(segmenter, data, root, trainer.is_global_zero, self_training.settings())
    if not (evaluation.run and data.val_dataset is not None):
        return None
    report = evaluate(
        segmenter,
        data.val_dataset.with_transform(evaluation.transform()),
        trainer,
        output=root / "eval",
        flip=evaluation.flip,
        crf=evaluation.crf,
        batch_size=evaluation.batch_size,
        num_workers=data.num_workers,
        settings={
            "backbone": data.backbone.describe(trainer.strategy.root_device),
            "eval_resize": evaluation.resize,
            "eval_crop": evaluation.crop,
            "seed": seed,
            "solver": module.solver,
            "self_training": {**self_training.settings(), "history": rounds},
            "timings": timings,
        },
    )
    segmenter.cluster_to_class = {
        name: torch.tensor(r["cluster_to_class"]) for name, r in report["readouts"].items() if "cluster_to_class" in r
    }
    export(segmenter, data, root, trainer.is_global_zero, self_training.settings())
    return report


def fitted_segmenter(
    cli: TrainingCLI, config: ReadoutConfig, self_training: SelfTrainingConfig, seed: int, timings: dict, resize: int
) -> tuple[Segmenter, list[dict]]:
    """The fitted head's self-training (with ``self_training.rounds``) and readouts over the training cache, with the
    backbone (segmenting at the shorter side ``resize``): the segmenter, and the self-training's rounds."""
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    start = time.perf_counter()
    cache, clusters = data.open_cache(), len(data.class_names) + config.extra_clusters
    head, rounds = self_trained_head(
        module.head.eval(),
        cache,
        data.feature_keys,
        clusters,
        self_training,
        seed,
        config.restarts,
        trainer.is_global_zero,
    )
    if rounds:
        timings["self_training_s"] = time.perf_counter() - start
        start = time.perf_counter()
    readouts = fit_readouts(
        head, cache, data.feature_keys, data.class_names, config, seed, progress=trainer.is_global_zero
    )
    segmenter = Segmenter(data.backbone, readouts, data.class_names, resize=resize)
    segmenter.to(trainer.strategy.root_device)
    timings["readouts_s"] = time.perf_counter() - start
    return segmenter, [asdict(r) for r in rounds]


def export(segmenter: Segmenter, data: HeadDataModule, root: Path, is_main: bool, self_training: dict) -> None:
    """Write the inference checkpoint ``root/model.safetensors`` (on the main process), recording how it was
    trained (feature layers, graphs, self-training)."""
    if is_main:  # on its device: the header records the arithmetic the backbone ran in there
        path = save_segmenter(
            segmenter,
            root / "model.safetensors",
            extra={
                "training": {
                    "feature_layers": [k[1] for k in data.feature_keys],
                    "graphs": [g.name for g in data.graph_specs],
                    "self_training": self_training,
                }
            },
        )
        log.info("inference checkpoint written to %s", path)


def train(args: list[str] | None = None) -> dict | None:
    """Train from a config's command line; returns the evaluation report (None without a validation set).

    ``--seeds 0,1,2`` runs once per seed and returns the summary over seeds (:func:`ultra.evaluation.seeds.summarize`).
    """
    torch.set_float32_matmul_precision("high")
    seeds, args = split_seeds_argument(sys.argv[1:] if args is None else list(args))
    if seeds is None:
        return run_training(parse_training(args))
    root = Path(parse_training(args, instantiate=False).config.trainer.default_root_dir)
    with folder_lock(root, "--trainer.default_root_dir"):
        return _run_seeds(args, seeds, root)


def _seed_arguments(args: list[str], seed: int, root: Path) -> list[str]:
    return args + ["--seed_everything", str(seed), "--trainer.default_root_dir", str(root / f"seed-{seed}")]


def _check_seed_folders(args: list[str], seeds: list[int], root: Path) -> None:
    """Before the first seed starts: every seed's folder is empty or resumes under this run's settings."""
    for seed in seeds:
        cli = parse_training(_seed_arguments(args, seed, root))
        if not cli.config.fresh:
            random_batches = cli.model.node_order == "random"
            check_resumable(
                Path(cli.trainer.default_root_dir),
                run_settings(cli.config, cli.model),
                cli.trainer.max_epochs if random_batches else None,
            )


def _run_seeds(args: list[str], seeds: list[int], root: Path) -> dict | None:
    _check_seed_folders(args, seeds, root)
    reports = {}
    for seed in seeds:
        log.info("seed %d of %s", seed, seeds)
        reports[seed] = run_training(parse_training(_seed_arguments(args, seed, root)))
    if any(r is None for r in reports.values()):
        return None
    summary = summarize(reports)
    with atomic_path(root / "seeds.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    print(format_summary(summary))
    log.info("summary over seeds %s written to %s", seeds, root / "seeds.json")
    return summary
