"""``ultra-select IMAGE --point X,Y -o mask.png``: the object under a clicked pixel.

With ``--checkpoint`` (a trained head), the object is the clicked pixel's head cluster kept to its
connected part under the click; without, the clicked token's relevance map, thresholded. Writes the
mask (0/255 PNG) to ``-o`` and, beside it, ``<name>_overlay.png`` (the mask over the image, the
clicked point marked) and ``<name>_map.png`` (the head's clusters, or the token's relevance map).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser

from ..analysis.segments import SELECT_METHODS, check_threshold, parse_point, select_object
from ..backbone.vit import FrozenViT, check_size
from ..data.io import read_image
from ..errors import ConfigError
from ..files import refuse_collisions, refuse_overwrite
from ..pictures import save_image
from ..readout.checkpoint import load
from . import add_backbone_arguments, console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-select", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="the image")
    parser.add_argument("--point", type=str, required=True, help="X,Y: the clicked pixel")
    parser.add_argument("-o", "--output", type=Path, required=True, help="mask PNG to write")
    parser.add_argument("--threshold", type=str, default="otsu", help="'otsu' or a fraction of the map's maximum")
    parser.add_argument(
        "--checkpoint", type=Path | None, default=None, help="a trained checkpoint: select by its head's clusters"
    )
    add_backbone_arguments(parser)
    return parser


def _check_checkpoint_options(cfg) -> None:
    """With ``--checkpoint`` the checkpoint sets the backbone and no relevance map is thresholded: refuse the
    options that would do nothing."""
    defaults = build_parser().get_defaults()
    unused = [f"--{name}" for name in ("threshold", "layer", "backbone") if cfg[name] != defaults[name]]
    if cfg.checkpoint is not None and unused:
        raise ConfigError(f"{', '.join(unused)} have no effect with --checkpoint (the head's clusters select)")


def run(args: list[str] | None = None) -> Path:
    """Select the object and write the pictures; returns the mask's path."""
    cfg = build_parser().parse_args(args)
    check_size(cfg.size)
    point = parse_point(cfg.point)
    threshold = check_threshold(cfg.threshold)
    _check_checkpoint_options(cfg)
    outputs = [
        cfg.output,
        cfg.output.with_name(f"{cfg.output.stem}_overlay.png"),
        cfg.output.with_name(f"{cfg.output.stem}_map.png"),
    ]
    refuse_collisions({cfg.image: outputs})
    refuse_overwrite(outputs, cfg.overwrite)
    picture = read_image(cfg.image, orient=True)
    if cfg.checkpoint is not None:
        segmenter, vit = load(cfg.checkpoint, weights=None if cfg.weights == "auto" else cfg.weights), None
    else:
        segmenter, vit = None, FrozenViT(cfg.backbone, weights=cfg.weights, layers=[cfg.layer], kinds=["x"])
    method = SELECT_METHODS[0] if segmenter is not None else SELECT_METHODS[1]
    result = select_object(picture, point, segmenter, vit, method, cfg.layer, cfg.size, threshold)
    save_image((result.mask * 255).astype(np.uint8), outputs[0])
    save_image(result.overlay, outputs[1])
    save_image(result.map, outputs[2])
    print(f"mask of {int(result.mask.sum())} px ({100 * result.mask.mean():.1f}% of the image) written to {outputs[0]}")
    return outputs[0]


main = console(run, "ultra-select")
