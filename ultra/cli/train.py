"""``train.py`` / ``ultra-train``: train the head, fit the readouts, evaluate, export the inference checkpoint.

    python train.py --config configs/demo.yaml [--trainer.max_epochs 10] [--data.num_workers 4]
    python train.py --config configs/camvid.yaml --seeds 0,1,2     # one run per seed, then mean +- std

Everything is configured by YAML through LightningCLI (``--print_config`` shows every option).
Outputs go to ``trainer.default_root_dir``: ``checkpoints/last.ckpt`` (written atomically every
epoch), ``model.safetensors`` (the inference checkpoint), ``eval/`` (report and pictures) and the
logs. Running the same command again after an interruption resumes from ``last.ckpt``; a run
folder holding a run with other settings is refused (``--fresh true`` discards it). With ``--seeds``, each seed runs in ``<default_root_dir>/seed-<s>`` (the feature cache and the graphs
are shared) and ``<default_root_dir>/seeds.json`` holds every figure's mean and standard deviation.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.plugins.io import TorchCheckpointIO

from . import console, require_writable
from ..readout.crf import require_crf
from ..evaluation.protocol import evaluate
from ..files import atomic_path
from ..readout.segmenter import ClusterReadout, ProbeReadout, Segmenter
from ..readout.checkpoint import save_segmenter
from ..readout.fit import CachedRows, fit_centroids
from ..readout.probe import train_probe
from ..evaluation.seeds import format_summary, split_seeds_argument, summarize
from ..head.module import SpectralHeadModule
from ..head.datamodule import UltraDataModule

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # run() passes the parsed command line


@dataclass
class ReadoutConfig:
    """After training: k-means (classes + ``extra_clusters`` clusters, ``restarts`` on ``kmeans_sample``
    tokens, then one pass over all), the raw-token baseline, the supervised probe (``probe_steps``
    L-BFGS iterations), and the evaluation options."""

    extra_clusters: int = 0
    restarts: int = 3
    kmeans_sample: int = 1 << 16
    raw_baseline: bool = True
    probe: bool = True
    probe_steps: int = 100
    evaluate: bool = True
    flip: bool = False
    crf: bool = False
    eval_batch_size: int = 4


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file and renames it: a killed run never leaves a truncated checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every epoch in ``<default_root_dir>/checkpoints`` (a fixed place, so a rerun can resume).

    Lightning writes ``last.ckpt`` only on epochs that save a regular checkpoint, so the latest epoch
    is also kept as the one regular checkpoint (the module holds only the head: both are small).
    """

    def __init__(self):
        super().__init__(save_last=True, save_top_k=1, every_n_epochs=1, enable_version_counter=False)

    def setup(self, trainer, pl_module, stage) -> None:
        self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        super().setup(trainer, pl_module, stage)


class UltraCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data", "model.in_dim", compute_fn=lambda dm: dm.head_dim, apply_on="instantiate")
        parser.link_arguments("data", "model.graph_weights", compute_fn=lambda dm: dm.graph_weights, apply_on="instantiate")
        parser.add_class_arguments(ReadoutConfig, "readout")
        parser.add_argument("--fresh", type=bool, default=False,
                            help="start over in a run folder that holds a checkpoint (by default a rerun resumes it, "
                                 "and refuses if its settings differ)")


def build_cli(args: list[str] | None = None) -> UltraCLI:
    return UltraCLI(
        SpectralHeadModule, UltraDataModule, run=False, args=args, seed_everything_default=0,
        parser_kwargs={"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter,
                       "usage": "ultra-train --config CONFIG [--seeds 0,1,2] [--fresh true] [--SECTION.OPTION VALUE ...]"},
        trainer_defaults={"callbacks": [RunCheckpoint()], "max_epochs": 10},
        save_config_kwargs={"overwrite": True},
    )


IGNORED_FOR_RESUME = ("data.num_workers", "data.cache_dir", "data.cache_batch_size")
"""Settings that do not change the head: a run may resume under other values of these."""


def head_settings(config) -> dict:
    """The settings that determine the head (model, data, seed), flattened to ``{"model.out_dim": 50, ...}``."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = json.loads(json.dumps(value, default=str))

    tree = config.as_dict()
    walk("", {"model": tree.get("model"), "data": tree.get("data"), "seed_everything": tree.get("seed_everything")})
    return {k: v for k, v in flat.items() if k not in IGNORED_FOR_RESUME}


def resume_point(trainer: pl.Trainer, settings: dict, fresh: bool) -> str | None:
    """``last.ckpt`` when the run folder holds an interrupted run with the same settings; a fresh start otherwise.

    A run folder whose checkpoint has other settings (or none recorded) is refused unless ``fresh``,
    which discards that checkpoint.
    """
    folder = Path(trainer.default_root_dir) / "checkpoints"
    checkpoint, recorded = folder / "last.ckpt", folder / "run.json"
    is_main = int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0
    if checkpoint.is_file() and not fresh:
        try:
            stored = json.loads(recorded.read_text())
        except (OSError, ValueError):
            raise ValueError(f"{checkpoint} has no readable record of its settings ({recorded}): pass --fresh true "
                             f"to discard it, or choose another --trainer.default_root_dir") from None
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k, "<unset>") != settings.get(k, "<unset>"))
        if differ:
            shown = ", ".join(f"{k} ({stored.get(k, '<unset>')!r} there, {settings.get(k, '<unset>')!r} now)" for k in differ[:4])
            raise ValueError(f"{trainer.default_root_dir} holds a run with other settings: {shown}"
                             f"{' and more' if len(differ) > 4 else ''}; pass --fresh true to discard it and start over, "
                             f"or choose another --trainer.default_root_dir")
        try:
            with zipfile.ZipFile(checkpoint) as archive:
                damaged = archive.testzip()
        except (OSError, zipfile.BadZipFile) as err:
            damaged = str(err)
        if damaged:
            raise ValueError(f"checkpoint {checkpoint} is damaged ({damaged}): pass --fresh true to start over")
        log.info("resuming from %s", checkpoint)
        return str(checkpoint)
    if is_main:
        if fresh and folder.exists():
            log.info("--fresh: discarding the checkpoints in %s", folder)
            shutil.rmtree(folder)
        with atomic_path(recorded) as tmp:
            tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    return None


def fit_readouts(module: SpectralHeadModule, data: UltraDataModule, config: ReadoutConfig, seed: int,
                 progress: bool = True) -> Segmenter:
    """k-means on the head's outputs (and on raw tokens), the optional probe, over the training cache."""
    cache = data.open_cache()
    k = len(data.class_names) + config.extra_clusters
    head = module.head.eval()
    centroids = lambda rows: fit_centroids(rows, k, seed, config.restarts, config.kmeans_sample)  # noqa: E731
    readouts = {"head": ClusterReadout(data.feature_keys, centroids(CachedRows(cache, data.feature_keys, head)), head)}
    if config.raw_baseline:
        raw = [data.feature_keys[-1]]
        readouts["raw"] = ClusterReadout(raw, centroids(CachedRows(cache, raw)))
    if config.probe:
        probe = train_probe(cache, data.feature_keys, len(data.class_names), steps=config.probe_steps, seed=seed,
                            progress=progress)
        if probe is not None:
            readouts["probe"] = ProbeReadout(data.feature_keys, probe)
    return Segmenter(data.backbone, readouts, data.class_names, resize=data.eval_resize)


def run_training(cli: UltraCLI) -> dict | None:
    """fit (resuming if possible), readouts, evaluation and export; returns the evaluation report."""
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    config = ReadoutConfig(**cli.config.readout)
    if config.crf:  # fail before training, not after it
        require_crf("--readout.crf")
    if config.extra_clusters < 0 or config.restarts < 1 or config.kmeans_sample < 1 or config.probe_steps < 1:
        raise ValueError("readout: extra_clusters must be >= 0 and restarts, kmeans_sample, probe_steps >= 1, got "
                         f"{config.extra_clusters}, {config.restarts}, {config.kmeans_sample}, {config.probe_steps}")
    require_writable(Path(trainer.default_root_dir))
    if config.evaluate and data.val_dataset is not None:  # a bad validation set fails now, not after training
        data.val_dataset.check(require_labels=True)
    ckpt_path = resume_point(trainer, head_settings(cli.config), bool(cli.config.fresh))
    seed = int(cli.config.seed_everything) if cli.config.seed_everything is not None else 0
    pl.seed_everything(seed, workers=True, verbose=False)  # again: building the backbone may have drawn random numbers
    start = time.perf_counter()
    trainer.fit(module, data, ckpt_path=ckpt_path)
    timings = {"fit_s": time.perf_counter() - start - sum(data.timings.values()), **data.timings}
    start = time.perf_counter()
    segmenter = fit_readouts(module, data, config, seed, progress=trainer.is_global_zero).to(trainer.strategy.root_device)
    timings["readouts_s"] = time.perf_counter() - start
    root = Path(trainer.default_root_dir)
    export(segmenter, data, root, trainer.is_global_zero)  # saved before the evaluation, saved again with its matching
    report = None
    if config.evaluate and data.val_dataset is not None:
        report = evaluate(segmenter, data.val_dataset.with_transform(data.eval_transform()), trainer, output=root / "eval",
                          flip=config.flip, crf=config.crf, batch_size=config.eval_batch_size, num_workers=data.num_workers,
                          settings={"backbone": data.backbone.describe(), "eval_resize": data.eval_resize, "eval_crop": data.eval_crop,
                                    "seed": seed, "solver": module.hparams.solver, "timings": timings})
        segmenter.cluster_to_class = {name: torch.tensor(r["cluster_to_class"]) for name, r in report["readouts"].items()
                                      if "cluster_to_class" in r and "+" not in name}
        export(segmenter, data, root, trainer.is_global_zero)
    return report


def export(segmenter: Segmenter, data: UltraDataModule, root: Path, is_main: bool) -> None:
    """Write the inference checkpoint ``root/model.safetensors`` (on the main process)."""
    if is_main:
        device = segmenter.device
        path = save_segmenter(segmenter.cpu(), root / "model.safetensors",
                              extra={"training": {"feature_layers": [k[1] for k in data.feature_keys],
                                                  "graphs": [g.name for g in data.graph_specs]}})
        segmenter.to(device)
        log.info("inference checkpoint written to %s", path)


def run(args: list[str] | None = None) -> dict | None:
    """Train from a config; returns the evaluation report (None without a validation set).

    ``--seeds 0,1,2`` runs once per seed and returns the summary over seeds (:func:`ultra.evaluation.seeds.summarize`).
    """
    torch.set_float32_matmul_precision("high")
    seeds, args = split_seeds_argument(sys.argv[1:] if args is None else list(args))
    if seeds is None:
        return run_training(build_cli(args))
    root = Path(build_cli(args).trainer.default_root_dir)
    reports = {}
    for seed in seeds:
        log.info("seed %d of %s", seed, seeds)
        reports[seed] = run_training(build_cli(args + ["--seed_everything", str(seed),
                                                       "--trainer.default_root_dir", str(root / f"seed-{seed}")]))
    if any(r is None for r in reports.values()):
        return None
    summary = summarize(reports)
    with atomic_path(root / "seeds.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    print(format_summary(summary))
    log.info("summary over seeds %s written to %s", seeds, root / "seeds.json")
    return summary


main = console(run, "ultra-train")
