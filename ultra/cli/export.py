"""``ultra-export --checkpoint CKPT -o model.onnx``: one readout of a checkpoint, with its frozen backbone, as one
ONNX file that onnxruntime runs without torch or timm (``ultra-segment --engine onnx``, :class:`ultra.OnnxSegmenter`).

    ultra-export --checkpoint runs/demo/model.safetensors -o runs/demo/model.onnx

The model takes ``images`` ``[N, 3, H, W]`` float32 RGB in [0, 1] (H and W multiples of the patch) and gives
``labels`` ``[N, H, W]`` int64 and the readout's patch ``scores``; its ``ultra`` metadata holds the class names, the
patch, the protocol's shorter side, the normalisation, the backbone and its weights' digest, and the ultra version.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from . import WEIGHTS_HELP, console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="inference checkpoint (model.safetensors)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument("--readout", type=str, default="head", help="the checkpoint's readout to export")
    parser.add_argument("--weights", type=str | None, default=None, help=WEIGHTS_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return parser


def run(args: list[str] | None = None) -> Path:
    """Export; returns the file written."""
    from ..deploy.export import export

    cfg = build_parser().parse_args(args)
    written = export(cfg.checkpoint, cfg.output, cfg.readout, cfg.weights, cfg.overwrite)
    print(f"ultra-export: wrote {written}")
    return written


main = console(run, "ultra-export")
