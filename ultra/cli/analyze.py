"""The "what / where" analysis of a frozen ViT: spectral clustering over all layers' kq, vv and xx graphs.

For a folder of images, for each graph kind, the gradient-descent solver finds the leading
pseudo-eigenvectors of the layer-averaged graph of each image alone and of the whole folder at
once (intra- and inter-image edges). The command writes, per image, a sheet with the first three
non-trivial eigenvectors as RGB and k-means segments, and ``analysis.json`` with the figures of
:mod:`ultra.analysis.whatwhere` (position R^2, class R^2, k-means mIoU) per kind and level.

    ultra-analyze FOLDER -o OUT [--classes 21] [--backbone vit_small_patch14_dinov2]
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from ..analysis.pipeline import analyze
from . import console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="a folder of images (images/ and optional labels/, or flat)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_function_arguments(analyze, skip={"images", "output", "overwrite"}, as_positional=False)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Parse the command line and run :func:`analyze`; returns the figures."""
    parser = build_parser()
    cfg = parser.instantiate_classes(parser.parse_args(argv))
    return analyze(**{k: v for k, v in vars(cfg).items() if k != "__path__"})


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``ultra-analyze`` / ``python -m ultra.cli.analyze``."""
    console(run, "ultra-analyze")(argv)


if __name__ == "__main__":
    main()
