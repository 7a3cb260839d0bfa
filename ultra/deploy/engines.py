"""What segments a photo for ``ultra-segment``: a checkpoint in torch, or an exported file in onnxruntime (which
imports neither torch nor timm). Both take ``[H, W, 3]`` uint8 and give the ``[H, W]`` class-id map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Engine:
    """A loaded segmenter: ``segment(picture, name)``, and what decides its labels besides the file's bytes."""

    name: str
    segment: Callable[[np.ndarray, str], np.ndarray]
    readout: str
    precision: str
    num_classes: int


def torch_engine(
    checkpoint: Path, readout: str | None, crf: bool, flip: bool, device: str, weights: str | None, precision: str
) -> Engine:
    """An inference checkpoint (:func:`ultra.load`) with its ``readout`` (default ``head``)."""
    import torch

    from ..readout.checkpoint import load

    readout = readout or "head"
    segmenter = load(checkpoint, device=device, weights=weights, precision=precision)
    segmenter.require_readout(readout)

    def segment(picture: np.ndarray, name: str) -> np.ndarray:
        tensor = torch.from_numpy(picture).permute(2, 0, 1)
        return segmenter.segment(tensor, readout=readout, crf=crf, flip=flip).numpy()

    return Engine("torch", segment, readout, segmenter.backbone.compute_precision, len(segmenter.class_names))


def onnx_engine(path: Path, readout: str | None, flip: bool) -> Engine:
    """A file of ``ultra-export`` in onnxruntime; ``readout``, when given, must be the one it holds."""
    from .runtime import OnnxSegmenter

    model = OnnxSegmenter(path)
    if readout not in (None, model.readout):
        raise ConfigError(f"--readout {readout}: {path} holds readout '{model.readout}' only")

    def segment(picture: np.ndarray, name: str) -> np.ndarray:
        return model.segment(picture, flip=flip, what=f"image {name}")

    return Engine("onnx", segment, model.readout, "fp32", len(model.class_names))
