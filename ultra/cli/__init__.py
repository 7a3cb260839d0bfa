"""Console entry points, one module per command, and what they share: error handling and the common options.

Conventions of every command: a switch is a bare flag (``--overwrite``, ``--crf``, ``--fresh``);
options are spelt with underscores (``--skip_existing``, as LightningCLI spells ``--print_config``);
the frozen ViT is ``--backbone`` (``data.backbone`` in a training config) and its input size
``--size``; a user's mistake is one line ``<command>: error: ...`` and exit status 2, a bug keeps
its traceback.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from typing import Literal

from ..backbone.image_size import DEFAULT_SIZE
from ..backbone.names import DEFAULT_BACKBONE
from ..backbone.precision import PRECISIONS
from ..errors import USER_ERRORS, ConfigError


def console(run: Callable[[list[str] | None], object], prog: str) -> Callable[[list[str] | None], None]:
    """Wrap ``run(args)`` as a console entry point: user errors print one line and exit with status 2."""

    def main(args: list[str] | None = None) -> None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("ultra").setLevel(logging.INFO)
        quiet_lightning()
        try:
            run(args)
            end_distributed()
        except USER_ERRORS as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            sys.exit(2)

    main.__doc__ = f"Console entry point of {prog}."
    return main


LIGHTNING_ADVERTS = ("💡 Tip:",)
"""How Lightning's product tips begin: a command's output leaves them out."""


def quiet_lightning() -> None:
    """Leave Lightning's product tips and its note on the absent TensorBoard out of a command's output (its
    other messages stay)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
    warnings.filterwarnings("ignore", message="Starting from v1.9.0, `tensorboardX` has been removed")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_ADVERTS)


def end_distributed() -> None:
    """Wait for every process of a DDP run, then tear its process group down while the interpreter is whole
    (left to the exit handlers, a gloo rank can abort in teardown now and then). A command that never imported torch
    (``ultra-segment --engine onnx``) has none."""
    if sys.modules.get("torch") is None:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_device(name: str, option: str = "--device") -> None:
    """Refuse a device torch does not know, or an accelerator this machine lacks, before anything is loaded."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option} '{name}' is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ConfigError(f"{option} {name}: this machine has no {device.type} device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{option} {name}: this machine has {torch.cuda.device_count()} cuda device(s)")


WEIGHTS_HELP = (
    "the backbone's weights (auto, hub, offline, random or a file): the checkpoint's own by default; a checkpoint "
    "trained on a weights file needs that file here"
)


PRECISION_HELP = (
    "the backbone's arithmetic: auto (bfloat16 where the hardware runs it natively: a CPU with AMX or AVX512-BF16, "
    "a CUDA device with bf16; float32 elsewhere), bf16 or fp32"
)


def add_precision_argument(parser) -> None:
    """``--precision``, the same in every command that runs the backbone."""
    parser.add_argument("--precision", type=Literal[PRECISIONS], default="auto", help=PRECISION_HELP)


def add_backbone_arguments(parser, defaults_from_method: bool = False) -> None:
    """The frozen-backbone options shared by the interpretation commands. With ``defaults_from_method``
    (``ultra-select``), ``--backbone`` and ``--layer`` default to None: the checkpoint's, the method's block."""
    parser.add_argument(
        "--backbone",
        type=str | None if defaults_from_method else str,
        default=None if defaults_from_method else DEFAULT_BACKBONE,
        help="the frozen ViT (timm name or alias)"
        + (f"; default: the checkpoint's, else {DEFAULT_BACKBONE}" if defaults_from_method else ""),
    )
    parser.add_argument("--weights", type=str, default="auto", help="auto, hub, offline, random or a weights file")
    add_precision_argument(parser)
    parser.add_argument(
        "--layer",
        type=int | None if defaults_from_method else int,
        default=None if defaults_from_method else -1,
        help="block of the tokens (default: "
        + ("2/3 of the depth for similarity, else the last)" if defaults_from_method else "the last)"),
    )
    parser.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help="shorter side of the image fed to the model (pixels)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
