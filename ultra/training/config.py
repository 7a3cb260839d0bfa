"""The training config: LightningCLI over the head's solver, the data module, the trainer, the head's self-training
and the readouts.

``python train.py --config configs/demo.yaml [--data.num_workers 4]`` trains the head, fits the readouts,
exports the inference checkpoint and evaluates. Everything is configured by YAML (``--print_config`` shows
every option). The head's solver is chosen the LightningCLI way: ``model.class_path`` is
``ultra.head.ExactHeadModule`` (the default: the linear head's exact optimum, one pass) or
``ultra.head.SGDHeadModule`` (AdamW on node batches; the MLP head), e.g. ``--model SGDHeadModule --model.lr 0.003``.
Outputs go to ``trainer.default_root_dir``: ``checkpoints/last.ckpt`` (written atomically every
epoch), ``model.safetensors`` (the inference checkpoint), ``eval/`` (report and pictures) and the
logs. Running the same command again after an interruption resumes from ``last.ckpt``; a run
folder holding a run with other settings is refused (``--fresh`` discards it). With ``--seeds 0,1,2``, each seed
runs in ``<default_root_dir>/seed-<s>`` (the feature cache and the graphs are shared) and
``<default_root_dir>/seeds.json`` holds every figure's mean and standard deviation.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import yaml
from jsonargparse import DefaultHelpFormatter
from pytorch_lightning.cli import LightningCLI

from ..data.transforms import EvalConfig
from ..errors import ConfigError, user_errors_unwrapped
from ..head import exact_module, sgd_module  # noqa: F401  (the solvers, so that --model takes their short names)
from ..head.datamodule import HeadDataModule
from ..head.module import HeadModule
from ..readout.fit import ReadoutConfig
from ..readout.self_training import SelfTrainingConfig
from .run_folder import RunCheckpoint

DEFAULT_HEAD_MODULE = "ultra.head.ExactHeadModule"
"""The head's solver when a config names none (``model.class_path``)."""


class TrainingCLI(LightningCLI):
    """The training command's parser: the head's solver, the data module, the trainer, the self-training, the
    readouts, the evaluation and the run options."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_HEAD_MODULE}})
        parser.link_arguments(
            "data", "model.init_args.in_dim", compute_fn=lambda dm: dm.head_dim, apply_on="instantiate"
        )
        parser.link_arguments(
            "data", "model.init_args.graph_weights", compute_fn=lambda dm: dm.graph_weights, apply_on="instantiate"
        )
        parser.add_class_arguments(SelfTrainingConfig, "self_training")
        parser.add_class_arguments(ReadoutConfig, "readout")
        parser.add_class_arguments(EvalConfig, "evaluation")
        parser.add_argument(
            "--fresh",
            action="store_true",
            help="start over in a run folder that holds a checkpoint (by default a rerun resumes it, "
            "and refuses if its settings differ)",
        )
        parser.add_argument(
            "--seeds",
            type=str | None,
            default=None,
            help="comma-separated seeds (e.g. 0,1,2): one run per seed in <default_root_dir>/seed-<s>, "
            "then seeds.json with the mean and standard deviation of every figure",
        )

    def __init__(self, *args, instantiate: bool = True, **kwargs):
        self.parse_only = not instantiate
        super().__init__(*args, **kwargs)

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option with its type and default (jsonargparse's), the description as written."""


SEED_RANGE = range(2**32)
"""The seeds numpy (and so Lightning's ``seed_everything``) accepts."""


def take_option(args: list[str], option: str, missing: str) -> tuple[list[str], list[str]]:
    """Every value of ``option`` (``--option VALUE`` or ``--option=VALUE``) taken out of ``args``, in order: the values,
    and the other arguments; ``missing`` is the error when the option ends the line without its value."""
    values, rest, i = [], [], 0
    while i < len(args):
        if args[i] == option:
            if i + 1 >= len(args):
                raise ConfigError(missing)
            values.append(args[i + 1])
            i += 2
            continue
        if args[i].startswith(f"{option}="):
            values.append(args[i].split("=", 1)[1])
        else:
            rest.append(args[i])
        i += 1
    return values, rest


def split_seeds_argument(args: list[str]) -> tuple[list[int] | None, list[str]]:
    """``--seeds 0,1,2`` (or ``--seeds=0,1,2``) taken out of ``args``: the seeds (of the last one given), and the
    other arguments."""
    values, rest = take_option(args, "--seeds", "--seeds needs a comma-separated list of integers, e.g. --seeds 0,1,2")
    seeds = [_parse_seeds(value) for value in values][-1] if values else None  # every one checked, the last wins
    if seeds is not None and any(a == "--seed_everything" or a.startswith("--seed_everything=") for a in rest):
        raise ConfigError("--seeds and --seed_everything exclude each other")
    return seeds, rest


def _parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got '{value}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct integers, got '{value}'")
    outside = [seed for seed in seeds if seed not in SEED_RANGE]
    if outside:
        raise ConfigError(f"--seeds must lie in 0 .. 2**32 - 1 (numpy's seeds); {outside[0]} does not")
    return seeds


def take_configs(args: list[str]) -> tuple[list[str], list[str]]:
    """Every ``--config FILE`` (or ``--config=FILE``) taken out of ``args``, in order: the configs, and the rest."""
    return take_option(args, "--config", "--config needs a training config file")


def training_evaluation(configs: list[str]) -> tuple[dict | None, EvalConfig]:
    """The validation set and the ``evaluation`` group of the training configs ``configs``, composed by the training
    parser without building anything (none: no set, the default evaluation)."""
    if not configs:
        return None, EvalConfig()
    trees = {config: _read_yaml(config) for config in configs}  # a clear error before the parser's own
    if not any(isinstance(tree, dict) and isinstance(tree.get("data"), dict) for tree in trees.values()):
        raise ConfigError(f"--config {' + '.join(configs)} has no data section (a training config has one)")
    tree = parse_training([a for c in configs for a in ("--config", c)], instantiate=False).config.as_dict()
    return tree["data"].get("val_dataset"), EvalConfig(**tree["evaluation"])


def _read_yaml(path: str):
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path} is not a readable YAML file: {err}") from None


def parse_training(args: list[str] | None = None, instantiate: bool = True) -> TrainingCLI:
    """The training config of ``args``: with ``instantiate``, its trainer, head module and data module built
    (``cli.trainer``, ``cli.model``, ``cli.datamodule``); without, only the parsed ``cli.config``."""
    with warnings.catch_warnings(), user_errors_unwrapped():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # passed on purpose: --seeds first
        return TrainingCLI(
            HeadModule,
            HeadDataModule,
            subclass_mode_model=True,
            run=False,
            instantiate=instantiate,
            args=sys.argv[1:] if args is None else list(args),
            seed_everything_default=0,
            auto_configure_optimizers=False,  # each solver makes its own optimizer (SGD) or none (exact)
            parser_kwargs={
                "description": __doc__,
                "formatter_class": HelpFormatter,
                "usage": "ultra-train --config CONFIG [--seeds 0,1,2] [--fresh] [--SECTION.OPTION VALUE ...]",
            },
            trainer_defaults={"callbacks": [RunCheckpoint()], "max_epochs": 10},
            save_config_kwargs={"overwrite": True},
        )
