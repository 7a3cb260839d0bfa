"""``ultra-segment --checkpoint CKPT IMAGES -o OUT``: label PNGs and overlays for a folder of images (or one image).

For every image ``NAME.ext`` it writes ``OUT/NAME.png`` (single-channel labels: class ids when the
checkpoint knows its matching, else cluster ids; 255 for clusters matched to no class) and
``OUT/NAME_overlay.png``. Existing files are never replaced unless ``--overwrite`` is given, and an
input image is never written over, whatever the flags. ``--skip_existing`` resumes an interrupted
batch. ``OUT/ultra-segment.json`` records what made the folder (the checkpoint's SHA-256, readout, CRF,
flip): a resume or a second batch with other settings is refused. An image that cannot be read or
segmented is reported and skipped; the command then exits with status 2 after the others are done.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from ..data.io import list_images, read_image
from ..errors import ConfigError, DataError
from ..files import folder_lock, refuse_collisions, refuse_overwrite
from ..pictures import overlay, save_image, save_label_map
from ..readout.checkpoint import load
from ..readout.crf import require_crf
from . import WEIGHTS_HELP, add_precision_argument, check_device, console
from .segment_folder import claim_output_folder, label_settings, outputs_for

log = logging.getLogger(__name__)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="inference checkpoint (model.safetensors)")
    parser.add_argument("images", type=Path, help="an image file or a folder of images")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--skip_existing", action="store_true", help="leave images whose outputs exist (resume a batch)"
    )
    parser.add_argument(
        "--readout",
        type=str,
        default="head",
        help="a readout of the checkpoint: head (default), raw, raw_centred, raw_whitened, probe or oracle",
    )
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (extra 'crf')")
    parser.add_argument("--flip", action="store_true", help="average with the mirrored image")
    parser.add_argument("--device", type=str, default="cpu")
    parser.add_argument("--weights", type=str | None, default=None, help=WEIGHTS_HELP)
    add_precision_argument(parser)
    return parser


def run(args: list[str] | None = None) -> list[Path]:
    """Segment the images; returns the label files written."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    if cfg.overwrite and cfg.skip_existing:
        raise ConfigError("--overwrite and --skip_existing exclude each other")
    check_device(cfg.device)
    images = _input_images(cfg.images)
    refuse_collisions({image: outputs_for(image, cfg.output) for image in images})
    if cfg.crf:
        require_crf("--crf")
    with folder_lock(cfg.output, "--output"):
        return _segment(cfg, images)


def _segment(cfg, images: list[Path]) -> list[Path]:
    """Segment ``images`` into the (locked) output folder. With ``--skip_existing`` an image counts as done only when
    both its outputs exist; an incomplete pair (a batch killed between them) is written again."""
    if not cfg.skip_existing:
        refuse_overwrite([path for image in images for path in outputs_for(image, cfg.output)], cfg.overwrite)
    segmenter = load(cfg.checkpoint, device=cfg.device, weights=cfg.weights, precision=cfg.precision)
    segmenter.require_readout(cfg.readout)
    settings = label_settings(cfg.checkpoint, cfg.readout, cfg.crf, cfg.flip, segmenter.backbone.compute_precision)
    claim_output_folder(cfg.output, settings, images, cfg.skip_existing, cfg.overwrite)
    if cfg.skip_existing:
        images = [image for image in images if not all(p.exists() for p in outputs_for(image, cfg.output))]
    written, failed = [], []
    for image in tqdm(images, desc="segment"):
        try:
            picture = read_image(image, orient=True)  # read once: segmented and overlaid
            labels = segmenter.segment(
                torch.from_numpy(picture).permute(2, 0, 1), readout=cfg.readout, crf=cfg.crf, flip=cfg.flip
            ).numpy()
        except (DataError, ValueError) as err:
            log.error("skipped %s: %s", image, err)
            failed.append(image)
            continue
        label_path, overlay_path = outputs_for(image, cfg.output)
        save_image(
            overlay(picture, labels, num_colors=max(len(segmenter.class_names), int(labels.max()) + 1)), overlay_path
        )
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
