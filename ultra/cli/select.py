"""``ultra-select IMAGE --point X,Y -o mask.png``: the object under a clicked pixel.

``--method similarity`` (the default): the squared cosine similarity of every token to the clicked one
at a middle block, thresholded; ``relevance``: the clicked token's relevance map, thresholded;
``clusters``: the clicked pixel's cluster of a trained head (``--checkpoint``). Each is kept to its
connected part under the click. With ``--checkpoint`` the backbone is the checkpoint's. Writes the
mask (0/255 PNG) to ``-o`` and, beside it, ``<name>_overlay.png`` (the mask over the image, the
clicked point marked) and ``<name>_map.png`` (the map, or the head's clusters).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser

from ..analysis.masks import check_threshold
from ..analysis.points import parse_point
from ..analysis.segments import SELECT_METHODS, select_object
from ..backbone.image_size import check_size
from ..backbone.vit import FrozenViT
from ..data.io import read_image
from ..errors import ConfigError
from ..files import refuse_collisions, refuse_overwrite
from ..pictures import save_image
from ..readout.checkpoint import load
from . import DEFAULT_BACKBONE, add_backbone_arguments, console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-select", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="the image")
    parser.add_argument("--point", type=str, required=True, help="X,Y: the clicked pixel")
    parser.add_argument("-o", "--output", type=Path, required=True, help="mask PNG to write")
    parser.add_argument("--method", type=str, default=SELECT_METHODS[0], help=f"one of {', '.join(SELECT_METHODS)}")
    parser.add_argument(
        "--threshold", type=str | None, default=None, help="'otsu' (the default) or a fraction of the map's maximum"
    )
    parser.add_argument(
        "--checkpoint", type=Path | None, default=None, help="a trained checkpoint (its backbone, its head's clusters)"
    )
    add_backbone_arguments(parser, defaults_from_method=True)
    return parser


def _check_method_options(cfg) -> None:
    """Refuse an unknown method and the options that would do nothing with the chosen method or checkpoint."""
    if cfg.method not in SELECT_METHODS:
        raise ConfigError(f"--method must be one of {', '.join(SELECT_METHODS)}, got '{cfg.method}'")
    if cfg.method == "clusters":
        if cfg.checkpoint is None:
            raise ConfigError("--method clusters needs --checkpoint (a trained head's clusters)")
        given = [f"--{name}" for name in ("threshold", "layer") if cfg[name] is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: no effect with --method clusters (the head's clusters select)")
    if cfg.checkpoint is not None and cfg.backbone is not None:
        raise ConfigError("--backbone: no effect with --checkpoint (the checkpoint's backbone is used)")


def run(args: list[str] | None = None) -> Path:
    """Select the object and write the pictures; returns the mask's path."""
    args = sys.argv[1:] if args is None else list(args)
    cfg = build_parser().parse_args(_attached_points(args))
    check_size(cfg.size)
    point = parse_point(cfg.point)
    threshold = check_threshold(cfg.threshold or "otsu")
    _check_method_options(cfg)
    outputs = [
        cfg.output,
        cfg.output.with_name(f"{cfg.output.stem}_overlay.png"),
        cfg.output.with_name(f"{cfg.output.stem}_map.png"),
    ]
    weights_file = [Path(cfg.weights)] if cfg.weights and Path(cfg.weights).is_file() else []
    refuse_collisions({cfg.image: outputs}, other_inputs=[p for p in [cfg.checkpoint] if p] + weights_file)
    refuse_overwrite(outputs, cfg.overwrite)
    picture = read_image(cfg.image, orient=True)
    if cfg.checkpoint is not None:
        segmenter, vit = (
            load(cfg.checkpoint, weights=None if cfg.weights == "auto" else cfg.weights, precision=cfg.precision),
            None,
        )
    else:
        segmenter, vit = (
            None,
            FrozenViT(cfg.backbone or DEFAULT_BACKBONE, weights=cfg.weights, kinds=["x"], precision=cfg.precision),
        )
    result = select_object(picture, point, segmenter, vit, cfg.method, cfg.layer, cfg.size, threshold)
    save_image((result.mask * 255).astype(np.uint8), outputs[0])
    save_image(result.overlay, outputs[1])
    save_image(result.map, outputs[2])
    print(f"mask of {int(result.mask.sum())} px ({100 * result.mask.mean():.1f}% of the image) written to {outputs[0]}")
    return outputs[0]


def _attached_points(args: list[str]) -> list[str]:
    """``--point -0.5,3`` as ``--point=-0.5,3``: a value starting with a minus is the point's, not an option."""
    out = []
    for i, arg in enumerate(args):
        if i and args[i - 1] == "--point" and arg.startswith("-"):
            out[-1] = f"--point={arg}"
        else:
            out.append(arg)
    return out


main = console(run, "ultra-select")
