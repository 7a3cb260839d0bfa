"""Console entry points (train, evaluate, segment, select) and their common error handling."""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from ..readout.crf import CRFUnavailable
from ..data.io import DataError
from ..readout.checkpoint import CheckpointError
from ..backbone.weights import WeightsError

USER_ERRORS = (DataError, CheckpointError, WeightsError, CRFUnavailable, FileExistsError, FileNotFoundError, PermissionError,
               ValueError, KeyError)


def console(run: Callable[[list[str] | None], object], prog: str) -> Callable[[list[str] | None], None]:
    """Wrap ``run(args)`` as a console entry point: user errors print one line and exit with status 2."""
    def main(args: list[str] | None = None) -> None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("ultra").setLevel(logging.INFO)
        try:
            run(args)
            end_distributed()
        except USER_ERRORS as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"{prog}: error: {message}", file=sys.stderr)
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


def require_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written there (before any long work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None


def check_backbone_arguments(cfg) -> None:
    """Early checks of the options added by :func:`add_backbone_arguments`."""
    if cfg.size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {cfg.size}")


def add_backbone_arguments(parser, size: int) -> None:
    """The frozen-backbone options shared by the interpretation commands."""
    parser.add_argument("--model", type=str, default="vit_small_patch14_dinov2")
    parser.add_argument("--weights", type=str, default="auto")
    parser.add_argument("--layer", type=int, default=-1, help="layer of the tokens (block output, default last)")
    parser.add_argument("--size", type=int, default=size, help="shorter side of the image fed to the model")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
