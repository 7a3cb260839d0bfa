"""``ultra-segment --checkpoint CKPT IMAGES -o OUT``: label PNGs and overlays for a folder of images (or one image).

For every image ``NAME.ext`` it writes ``OUT/NAME.png`` (single-channel labels: class ids when the
checkpoint knows its matching, else cluster ids; 255 for clusters matched to no class) and
``OUT/NAME_overlay.png``. Existing files are never replaced unless ``--overwrite`` is given, and an
input image is never written over, whatever the flags. ``--skip_existing`` resumes an interrupted
batch. ``OUT/ultra-segment.json`` records what made the folder (the checkpoint's SHA-256, engine, readout, CRF,
flip): a resume or a second batch with other settings is refused. An image that cannot be read or
segmented is reported and skipped; the command then exits with status 2 after the others are done.
``--engine onnx`` segments with a model written by ``ultra-export`` in onnxruntime (no torch, no timm).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from ..data.io import list_images, read_image
from ..deploy.engines import Engine, onnx_engine, torch_engine
from ..errors import ConfigError, DataError
from ..files import folder_lock, refuse_collisions, refuse_overwrite
from ..pictures import overlay, save_image, save_label_map
from . import WEIGHTS_HELP, add_precision_argument, console
from .segment_folder import claim_output_folder, label_settings, outputs_for

log = logging.getLogger(__name__)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-segment", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="inference checkpoint (model.safetensors), or with --engine onnx a model written by ultra-export",
    )
    parser.add_argument("images", type=Path, help="an image file or a folder of images")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--engine", type=Literal["torch", "onnx"], default="torch", help="torch or onnx(runtime)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--skip_existing", action="store_true", help="leave images whose outputs exist (resume a batch)"
    )
    parser.add_argument(
        "--readout",
        type=str | None,
        default=None,
        help="a readout of the checkpoint: head (the default), raw, raw_centred, raw_whitened, probe or oracle; "
        "an exported model holds one",
    )
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (extra 'crf'; torch engine)")
    parser.add_argument("--flip", action="store_true", help="average with the mirrored image")
    parser.add_argument("--device", type=str, default="cpu", help="torch engine: the device")
    parser.add_argument("--weights", type=str | None, default=None, help=f"torch engine: {WEIGHTS_HELP}")
    add_precision_argument(parser)
    return parser


def run(args: list[str] | None = None) -> list[Path]:
    """Segment the images; returns the label files written."""
    cfg = build_parser().parse_args(args)
    if cfg.overwrite and cfg.skip_existing:
        raise ConfigError("--overwrite and --skip_existing exclude each other")
    _check_engine_options(cfg)
    images = _input_images(cfg.images)
    refuse_collisions({image: outputs_for(image, cfg.output) for image in images}, other_inputs=[cfg.checkpoint])
    with folder_lock(cfg.output, "--output"):
        return _segment(cfg, images)


def _check_engine_options(cfg) -> None:
    """The torch engine's device and CRF; with the onnx engine, refuse what it would ignore (the exported file fixes
    the backbone, its weights and float32 arithmetic, on onnxruntime's CPU provider)."""
    if cfg.engine == "onnx":
        given = {"--crf": cfg.crf, "--weights": cfg.weights, "--precision": cfg.precision != "auto"}
        ignored = [option for option, value in {**given, "--device": cfg.device != "cpu"}.items() if value]
        if ignored:
            raise ConfigError(f"{', '.join(ignored)}: no effect with --engine onnx (the exported file fixes them)")
        return
    from ..readout.crf import require_crf
    from . import check_device

    check_device(cfg.device)
    if cfg.crf:
        require_crf("--crf")


def _engine(cfg) -> Engine:
    if cfg.engine == "onnx":
        return onnx_engine(cfg.checkpoint, cfg.readout, cfg.flip)
    return torch_engine(cfg.checkpoint, cfg.readout, cfg.crf, cfg.flip, cfg.device, cfg.weights, cfg.precision)


def _segment(cfg, images: list[Path]) -> list[Path]:
    """Segment ``images`` into the (locked) output folder. With ``--skip_existing`` an image counts as done only when
    both its outputs exist; an incomplete pair (a batch killed between them) is written again."""
    if not cfg.skip_existing:
        refuse_overwrite([path for image in images for path in outputs_for(image, cfg.output)], cfg.overwrite)
    engine = _engine(cfg)
    settings = label_settings(cfg.checkpoint, engine.name, engine.readout, cfg.crf, cfg.flip, engine.precision)
    claim_output_folder(cfg.output, settings, images, cfg.skip_existing, cfg.overwrite)
    if cfg.skip_existing:
        images = [image for image in images if not all(p.exists() for p in outputs_for(image, cfg.output))]
    written, failed = [], []
    for image in tqdm(images, desc="segment"):
        try:
            picture = read_image(image, orient=True)  # read once: segmented and overlaid
            labels = engine.segment(picture, str(image))
        except (DataError, ValueError) as err:
            log.error("skipped %s: %s", image, err)
            failed.append(image)
            continue
        label_path, overlay_path = outputs_for(image, cfg.output)
        save_image(overlay(picture, labels, num_colors=max(engine.num_classes, int(labels.max()) + 1)), overlay_path)
        save_label_map(labels, label_path)  # the label map last: where it exists, the overlay does too
        written.append(label_path)
    if failed:
        raise DataError(
            f"{len(failed)} of {len(images)} images could not be segmented (first: {failed[0]}); "
            f"the other {len(written)} were written to {cfg.output}"
        )
    return written


def _input_images(source: Path) -> list[Path]:
    if source.is_dir():
        images = list_images(source)
        if not images:
            raise DataError(f"image folder {source} contains no images")
        return images
    if source.is_file():
        return [source]
    raise DataError(f"{source} is neither an image file nor a folder")


main = console(run, "ultra-segment")
