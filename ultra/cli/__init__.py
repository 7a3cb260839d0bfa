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
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..backbone.onnx_dinov2 import OfflineWeightsError
from ..backbone.weights import WeightsError
from ..data.io import DataError
from ..errors import ConfigError, UserError
from ..readout.crf import CRFUnavailable

USER_ERRORS = (UserError, WeightsError, OfflineWeightsError, CRFUnavailable, FileExistsError, FileNotFoundError,
               PermissionError)
"""What a command reports as one line: bad settings, arguments, files and images, missing weights or extras,
outputs that exist, inputs that do not, folders that cannot be written. Every other exception is a bug."""

DEFAULT_SIZE = 448
"""The shorter side (pixels) the interpretation commands feed to the backbone (``--size``)."""


def console(run: Callable[[list[str] | None], object], prog: str) -> Callable[[list[str] | None], None]:
    """Wrap ``run(args)`` as a console entry point: user errors print one line and exit with status 2."""
    def main(args: list[str] | None = None) -> None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("ultra").setLevel(logging.INFO)
        try:
            run(args)
            end_distributed()
        except USER_ERRORS as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            sys.exit(2)

    main.__doc__ = f"Console entry point of {prog}."
    return main


def end_distributed() -> None:
    """Wait for every process of a DDP run, then tear its process group down while the interpreter is whole
    (left to the exit handlers, a gloo rank can abort in teardown now and then)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def refuse_overwrite(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise if any of ``paths`` exists and ``overwrite`` is not set."""
    existing = [p for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) exist already (e.g. {existing[0]}); pass --overwrite to replace them")


def refuse_collisions(outputs_of: Mapping[Path, Sequence[Path]], other_inputs: Iterable[Path] = ()) -> None:
    """Before any work: refuse an output that is an input (the images of ``outputs_of`` and ``other_inputs``, e.g.
    their labels), whatever ``--overwrite`` says, and an output that two images would both write."""
    inputs = {Path(p).resolve(): Path(p) for p in [*outputs_of, *other_inputs]}
    writer: dict[Path, Path] = {}
    for image, outputs in outputs_of.items():
        for out in outputs:
            key = Path(out).resolve()
            if key in inputs:
                raise DataError(f"output {out} is the input {inputs[key]}; choose another output (inputs are never replaced)")
            if writer.setdefault(key, Path(image)) != Path(image):
                raise DataError(f"{writer[key]} and {image} would both write {out}; rename one or write them to "
                                f"separate folders")


def check_device(name: str, option: str = "--device") -> None:
    """Refuse a device torch does not know, or an accelerator this machine lacks, before anything is loaded."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option} '{name}' is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ConfigError(f"{option} {name}: this machine has no {device.type} device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{option} {name}: this machine has {torch.cuda.device_count()} cuda device(s)")


def require_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written there (before any long work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None


def check_size(size: int, option: str = "--size") -> None:
    """Refuse an input size (pixels) below 1, the same way in every command."""
    if size < 1:
        raise ConfigError(f"{option} must be a positive number of pixels, got {size}")


def add_backbone_arguments(parser) -> None:
    """The frozen-backbone options shared by the interpretation commands."""
    parser.add_argument("--backbone", type=str, default="vit_small_patch14_dinov2", help="the frozen ViT (timm name or alias)")
    parser.add_argument("--weights", type=str, default="auto", help="auto, hub, offline, random or a weights file")
    parser.add_argument("--layer", type=int, default=-1, help="layer of the tokens (block output, default last)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="shorter side of the image fed to the model (pixels)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
