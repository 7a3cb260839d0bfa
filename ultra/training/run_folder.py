"""A run folder's identity and its checkpoints: what a rerun resumes, and what it refuses.

``checkpoints/run.json`` records the settings that determine the exported model (:func:`run_settings`); a rerun
with the same settings resumes from ``checkpoints/last.ckpt``, one with other settings is refused
unless ``--fresh`` discards the old run. Checkpoints are written atomically (a killed run never
leaves a truncated one).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..errors import ConfigError
from ..files import atomic_path
from ..head.datamodule import HeadDataModule

log = logging.getLogger(__name__)


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
        with warnings.catch_warnings():  # the folder holds run.json (and last.ckpt when resuming) by design
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)


def run_settings(config, module: pl.LightningModule) -> dict:
    """The settings that determine the exported model (the head, its self-training and its readouts), flattened to
    ``{"model.out_dim": 50, ...}``: a rerun resumes only under the same ones. Evaluation-only and speed-only
    settings, and the batches' order and seed under a solver that sweeps the nodes once, are left out."""
    tree = config.as_dict()
    random_batches = module.node_order == "random"
    model = {
        "class_path": tree["model"]["class_path"],
        **type(module).head_arguments(tree["model"].get("init_args", {})),
    }
    settings = {"model": model, "data": HeadDataModule.head_arguments(tree["data"], random_batches)}
    settings["self_training"] = tree.get("self_training", {})  # the exported head is the self-trained one
    settings["readout"] = tree.get("readout", {})  # the evaluation's options are their own group: not compared
    if random_batches:  # the node batches' seed
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
        check_resumable(Path(trainer.default_root_dir), settings, trainer.max_epochs if epochs_matter else None)
        log.info("resuming from %s", checkpoint)
        return str(checkpoint)
    if trainer.is_global_zero:
        start_run_folder(folder, recorded, settings, discard=fresh)
    return None


def check_resumable(root: Path, settings: dict, max_epochs: int | None) -> None:
    """Raise unless the run folder ``root`` is empty of checkpoints or holds one that resumes under ``settings``:
    same settings, intact, and (``max_epochs`` given: the SGD solver) trained for at most ``max_epochs``."""
    checkpoint, recorded = root / "checkpoints" / "last.ckpt", root / "checkpoints" / "run.json"
    if not checkpoint.is_file():
        return
    check_same_settings(recorded, settings, root)
    check_intact(checkpoint)
    if max_epochs is not None:
        done = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]) + 1
        if 0 <= max_epochs < done:
            raise ConfigError(
                f"{root} holds a run trained for {done} epochs, more than --trainer.max_epochs {max_epochs}: "
                f"pass --fresh to train {max_epochs} epochs anew, or ask for at least {done}"
            )


def check_same_settings(recorded: Path, settings: dict, root) -> None:
    """Raise unless ``recorded`` (a run's ``run.json``) holds ``settings``."""
    try:
        stored = json.loads(recorded.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{root} holds a checkpoint without a readable record of its settings ({recorded}): pass "
            f"--fresh to discard it, or choose another --trainer.default_root_dir"
        ) from None
    differ = sorted(k for k in set(stored) | set(settings) if stored.get(k, "<unset>") != settings.get(k, "<unset>"))
    if differ:
        shown = ", ".join(
            f"{k} ({stored.get(k, '<unset>')!r} there, {settings.get(k, '<unset>')!r} now)" for k in differ[:4]
        )
        raise ConfigError(
            f"{root} holds a run with other settings: {shown}{' and more' if len(differ) > 4 else ''}; "
            f"pass --fresh to discard it and start over, or choose another --trainer.default_root_dir"
        )


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
