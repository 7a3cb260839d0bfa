"""``train.py`` / ``ultra-train``: train the head, fit the readouts, evaluate, export the inference checkpoint.

    python train.py --config configs/demo.yaml [--data.num_workers 4]
    python train.py --config configs/camvid.yaml --seeds 0,1,2     # one run per seed, then mean +- std
    python train.py --config configs/cocostuff27.yaml --config configs/backbones/dino_vits8.yaml

Everything is configured by YAML through LightningCLI (``--print_config`` shows every option).
Outputs go to ``trainer.default_root_dir``: ``checkpoints/last.ckpt`` (written atomically every
epoch), ``model.safetensors`` (the inference checkpoint), ``eval/`` (report and pictures) and the
logs. Running the same command again after an interruption resumes from ``last.ckpt``; a run
folder holding a run with other settings is refused (``--fresh`` discards it). With ``--seeds``, each seed runs in ``<default_root_dir>/seed-<s>`` (the feature cache and the graphs
are shared) and ``<default_root_dir>/seeds.json`` holds every figure's mean and standard deviation.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from jsonargparse import DefaultHelpFormatter
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..errors import ConfigError
from ..evaluation.protocol import evaluate
from ..evaluation.seeds import format_summary, split_seeds_argument, summarize
from ..files import atomic_path, folder_lock, remove_stale_parts
from ..head.datamodule import UltraDataModule
from ..head.module import SpectralHeadModule
from ..readout.checkpoint import save_segmenter
from ..readout.crf import require_crf
from ..readout.fit import ReadoutConfig, fit_readouts
from ..readout.segmenter import Segmenter
from . import console, require_writable

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # run() passes the parsed command line


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
    """The training command's parser: the head module, the data module, the trainer, the readouts and the run options."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data", "model.in_dim", compute_fn=lambda dm: dm.head_dim, apply_on="instantiate")
        parser.link_arguments("data", "model.graph_weights", compute_fn=lambda dm: dm.graph_weights, apply_on="instantiate")
        parser.add_class_arguments(ReadoutConfig, "readout")
        parser.add_argument("--fresh", action="store_true",
                            help="start over in a run folder that holds a checkpoint (by default a rerun resumes it, "
                                 "and refuses if its settings differ)")
        parser.add_argument("--seeds", type=str | None, default=None,
                            help="comma-separated seeds (e.g. 0,1,2): one run per seed in <default_root_dir>/seed-<s>, "
                                 "then seeds.json with the mean and standard deviation of every figure")


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option with its type and default (jsonargparse's), the description as written."""


def build_cli(args: list[str] | None = None) -> UltraCLI:
    return UltraCLI(
        SpectralHeadModule, UltraDataModule, run=False, args=args, seed_everything_default=0,
        auto_configure_optimizers=False,  # the head module makes its own optimizer (sgd) or none (exact)
        parser_kwargs={"description": __doc__, "formatter_class": HelpFormatter,
                       "usage": "ultra-train --config CONFIG [--seeds 0,1,2] [--fresh] [--SECTION.OPTION VALUE ...]"},
        trainer_defaults={"callbacks": [RunCheckpoint()], "max_epochs": 10},
        save_config_kwargs={"overwrite": True},
    )


def head_settings(config) -> dict:
    """The settings that determine the head, flattened to ``{"model.out_dim": 50, ...}``: a rerun resumes only
    under the same ones. Evaluation-only and speed-only settings, and the SGD ones under the exact solver, are left out."""
    tree = config.as_dict()
    model = SpectralHeadModule.head_settings(tree["model"])
    sgd = model["solver"] == "sgd"
    settings = {"model": model, "data": UltraDataModule.head_settings(tree["data"], sgd)}
    if sgd:  # the node batches' seed; the exact solve has none
        settings["seed_everything"] = tree.get("seed_everything")
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = json.loads(json.dumps(value, default=str))

    walk("", settings)
    return flat


def resume_point(trainer: pl.Trainer, settings: dict, fresh: bool, epochs_matter: bool = True) -> str | None:
    """``last.ckpt`` when the run folder holds an interrupted run with the same settings; a fresh start otherwise.

    A run folder whose checkpoint has other settings (or none recorded), or (when ``epochs_matter``: the SGD solver)
    more epochs than ``trainer.max_epochs`` asks for, is refused unless ``fresh``, which discards that checkpoint.
    """
    folder = Path(trainer.default_root_dir) / "checkpoints"
    checkpoint, recorded = folder / "last.ckpt", folder / "run.json"
    if checkpoint.is_file() and not fresh:
        check_same_settings(recorded, settings, trainer.default_root_dir)
        check_intact(checkpoint)
        if epochs_matter:
            done = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]) + 1
            if trainer.max_epochs is not None and 0 <= trainer.max_epochs < done:
                raise ConfigError(f"{trainer.default_root_dir} holds a run trained for {done} epochs, more than "
                                  f"--trainer.max_epochs {trainer.max_epochs}: pass --fresh to train {trainer.max_epochs} "
                                  f"epochs anew, or ask for at least {done}")
        log.info("resuming from %s", checkpoint)
        return str(checkpoint)
    if trainer.is_global_zero:
        start_run_folder(folder, recorded, settings, discard=fresh)
    return None


def check_same_settings(recorded: Path, settings: dict, root) -> None:
    """Raise unless ``recorded`` (a run's ``run.json``) holds ``settings``."""
    try:
        stored = json.loads(recorded.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{root} holds a checkpoint without a readable record of its settings ({recorded}): pass "
                          f"--fresh to discard it, or choose another --trainer.default_root_dir") from None
    differ = sorted(k for k in set(stored) | set(settings) if stored.get(k, "<unset>") != settings.get(k, "<unset>"))
    if differ:
        shown = ", ".join(f"{k} ({stored.get(k, '<unset>')!r} there, {settings.get(k, '<unset>')!r} now)" for k in differ[:4])
        raise ConfigError(f"{root} holds a run with other settings: {shown}{' and more' if len(differ) > 4 else ''}; "
                          f"pass --fresh to discard it and start over, or choose another --trainer.default_root_dir")


def check_intact(checkpoint: Path) -> None:
    """Raise if the checkpoint's zip archive is damaged."""
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        damaged = str(err)
    if damaged:
        raise ConfigError(f"checkpoint {checkpoint} is damaged ({damaged}): pass --fresh to start over")


def start_run_folder(folder: Path, recorded: Path, settings: dict, discard: bool) -> None:
    """Record the run's settings in ``recorded``, first discarding an old run's checkpoints when ``discard``."""
    if discard and folder.exists():
        log.info("--fresh: discarding the checkpoints in %s", folder)
        shutil.rmtree(folder)
    with atomic_path(recorded) as tmp:
        tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))


def run_training(cli: UltraCLI) -> dict | None:
    """Checks, then (in the locked run folder) fit, resuming if possible, readouts, evaluation and export; returns
    the evaluation report."""
    trainer, data = cli.trainer, cli.datamodule
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    config = ReadoutConfig(**cli.config.readout)
    if config.crf:  # fail before training, not after it
        require_crf("--readout.crf")
    config.check_clusters(len(data.class_names), data.num_training_tokens)
    root = Path(trainer.default_root_dir)
    require_writable(root)
    if config.evaluate and data.val_dataset is not None:  # a bad validation set fails now, not after training
        data.val_dataset.check(require_labels=True)
    # one run per folder: the other processes of a multi-process run are covered by the first one's lock
    with folder_lock(root, "--trainer.default_root_dir") if trainer.is_global_zero else contextlib.nullcontext():
        return _train(cli, config, root)


def _train(cli: UltraCLI, config: ReadoutConfig, root: Path) -> dict | None:
    """The run itself (its folder checked and locked): fit, readouts, export, evaluation."""
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    if trainer.is_global_zero:  # what a killed write of this folder left
        for folder in (root, root / "checkpoints", root / "eval"):
            remove_stale_parts(folder)
    ckpt_path = resume_point(trainer, head_settings(cli.config), bool(cli.config.fresh), module.hparams.solver == "sgd")
    seed = int(cli.config.seed_everything) if cli.config.seed_everything is not None else 0
    pl.seed_everything(seed, workers=True, verbose=False)  # again: building the backbone may have drawn random numbers
    start = time.perf_counter()
    trainer.fit(module, data, ckpt_path=ckpt_path)
    timings = {"fit_s": time.perf_counter() - start - sum(data.timings.values()), **data.timings}
    start = time.perf_counter()
    readouts = fit_readouts(module.head, data.open_cache(), data.feature_keys, data.class_names, config, seed,
                            progress=trainer.is_global_zero)
    segmenter = Segmenter(data.backbone, readouts, data.class_names, resize=data.evaluation.resize)
    segmenter.to(trainer.strategy.root_device)
    timings["readouts_s"] = time.perf_counter() - start
    export(segmenter, data, root, trainer.is_global_zero)  # saved before the evaluation, saved again with its matching
    report = None
    if config.evaluate and data.val_dataset is not None:
        report = evaluate(segmenter, data.val_dataset.with_transform(data.evaluation.transform()), trainer,
                          output=root / "eval", flip=config.flip, crf=config.crf, batch_size=config.eval_batch_size,
                          num_workers=data.num_workers,
                          settings={"backbone": data.backbone.describe(), "eval_resize": data.evaluation.resize,
                                    "eval_crop": data.evaluation.crop, "seed": seed, "solver": module.hparams.solver,
                                    "timings": timings})
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
    with folder_lock(root, "--trainer.default_root_dir"):
        return _run_seeds(args, seeds, root)


def _run_seeds(args: list[str], seeds: list[int], root: Path) -> dict | None:
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
