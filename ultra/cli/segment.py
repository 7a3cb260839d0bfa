"""``ultra-segment CKPT IMAGES -o OUT``: label PNGs and overlays for a folder of images (or one image).

For every image ``NAME.ext`` it writes ``OUT/NAME.png`` (single-channel labels: class ids when the
checkpoint knows its matching, else cluster ids; 255 for clusters matched to no class) and
``OUT/NAME_overlay.png``. Existing files are never replaced unless ``--overwrite`` is given.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from . import console, refuse_overwrite
from ..crf import require_crf
from ..data.io import DataError, list_images, read_image
from ..inference import load
from ..viz import overlay, save_image


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="inference checkpoint (model.safetensors)")
    parser.add_argument("images", type=Path, help="an image file or a folder of images")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--readout", type=str, default="head", help="head (default), raw or probe")
    parser.add_argument("--crf", action="store_true", help="refine with a dense CRF (extra 'crf')")
    parser.add_argument("--flip", action="store_true", help="average with the mirrored image")
    parser.add_argument("--device", type=str, default="cpu")
    return parser


def outputs_for(image: Path, output: Path) -> tuple[Path, Path]:
    return output / f"{image.stem}.png", output / f"{image.stem}_overlay.png"


def run(args: list[str] | None = None) -> list[Path]:
    """Segment the images; returns the label files written."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    if cfg.images.is_dir():
        images = list_images(cfg.images)
        if not images:
            raise DataError(f"image folder {cfg.images} contains no images")
    elif cfg.images.is_file():
        images = [cfg.images]
    else:
        raise DataError(f"{cfg.images} is neither an image file nor a folder")
    refuse_overwrite([path for image in images for path in outputs_for(image, cfg.output)], cfg.overwrite)
    if cfg.crf:
        require_crf("--crf")
    segmenter = load(cfg.checkpoint, device=cfg.device)
    cfg.output.mkdir(parents=True, exist_ok=True)
    written = []
    for image in tqdm(images, desc="segment"):
        labels = segmenter.segment(image, readout=cfg.readout, crf=cfg.crf, flip=cfg.flip).numpy().astype(np.uint8)
        label_path, overlay_path = outputs_for(image, cfg.output)
        save_image(labels, label_path)
        save_image(overlay(read_image(image), labels, num_colors=max(len(segmenter.class_names), int(labels.max()) + 1)), overlay_path)
        written.append(label_path)
    return written


main = console(run, "ultra-segment")
