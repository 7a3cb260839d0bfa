"""``ultra-interpret IMAGE -o OUT``: relevance maps of an image's tokens, segments from them, and a picture sheet.

Writes ``OUT/<name>_segments.png`` (segment ids; 16-bit beyond 256 segments) and ``OUT/<name>_sheet.png`` (the
image, the segments, and the maps of a few tokens). Each map costs about one backward pass, so the maps are of
an anchor grid of tokens, every ``--stride``-th in each direction (2 by default; 1 for every token,
about stride^2 times slower); ``--segments K`` or ``--distance_threshold T`` sets the clustering. By default
each map is weighted by its token's similarity map before clustering (``--maps product``: on camvid,
cocostuff-dev and voc-mini it segmented as well as or better than the maps alone, ``bench/interpret.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser

from ..analysis.segments import prepare_image, relevance_sheet, segment_by_relevance
from ..backbone.image_size import check_size
from ..backbone.vit import FrozenViT
from ..data.io import read_image
from ..data.transforms import image_to_tensor
from ..errors import ConfigError
from ..files import refuse_overwrite
from ..pictures import save_label_map, save_sheet
from . import add_backbone_arguments, console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-interpret", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="the image")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--stride", type=int, default=2, help="anchor-grid stride (1: every token)")
    parser.add_argument("--segments", type=int | None, default=None, help="number of segments")
    parser.add_argument(
        "--distance_threshold", type=float | None, default=None, help="cosine distance cut (default 0.5)"
    )
    parser.add_argument(
        "--maps",
        type=Literal["product", "relevance"],
        default="product",
        help="what is clustered: each map times its token's similarity map, or the relevance maps alone",
    )
    parser.add_argument(
        "--clustering",
        type=Literal["average", "kmeans"],
        default="average",
        help="average linkage, or k-means (needs --segments)",
    )
    add_backbone_arguments(parser)
    return parser


def run(args: list[str] | None = None) -> Path:
    """Compute the maps, segment, write the pictures; returns the sheet's path."""
    cfg = build_parser().parse_args(args)
    check_size(cfg.size)
    if cfg.stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {cfg.stride}")
    if cfg.segments is not None and cfg.segments < 1:
        raise ConfigError(f"--segments must be >= 1, got {cfg.segments}")
    if cfg.distance_threshold is not None and not 0 <= cfg.distance_threshold <= 2:
        raise ConfigError(f"--distance_threshold is a cosine distance in [0, 2], got {cfg.distance_threshold}")
    if cfg.clustering == "kmeans" and cfg.segments is None:
        raise ConfigError("--clustering kmeans needs --segments K")
    if cfg.segments is None and cfg.distance_threshold is None:
        cfg.distance_threshold = 0.5
    outputs = [cfg.output / f"{cfg.image.stem}_segments.png", cfg.output / f"{cfg.image.stem}_sheet.png"]
    refuse_overwrite(outputs, cfg.overwrite)
    picture = read_image(cfg.image, orient=True)
    vit = FrozenViT(cfg.backbone, weights=cfg.weights, layers=[cfg.layer], kinds=["x"], precision=cfg.precision)
    image = prepare_image(vit, image_to_tensor(picture), cfg.size)
    segments, result = segment_by_relevance(
        vit,
        image,
        picture.shape[:2],
        cfg.layer,
        stride=cfg.stride,
        maps=cfg.maps,
        num_segments=cfg.segments,
        distance_threshold=cfg.distance_threshold,
        clustering=cfg.clustering,
        what=str(cfg.image),
    )
    save_label_map(segments.numpy(), outputs[0])
    panels, titles = relevance_sheet(picture, segments, result)
    save_sheet([panels], [titles], outputs[1])
    print(f"{len(result.targets)} maps at layer {result.layer}, {int(segments.max()) + 1} segments; sheet {outputs[1]}")
    return outputs[1]


main = console(run, "ultra-interpret")
