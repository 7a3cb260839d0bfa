"""``ultra.export``: one inference checkpoint's readout, with its frozen backbone, as one ONNX file.

The graph takes ``images`` ``[N, 3, H, W]`` float32 RGB in [0, 1] (N, H and W dynamic; H and W multiples of the
patch) and gives ``labels`` ``[N, H, W]`` int64 (what :meth:`ultra.Segmenter.segment` gives an image of that size,
without CRF and flip) and ``scores`` ``[N, K, H/p, W/p]`` (the readout's score of each of its K outputs, clusters or
classes, per patch; ``labels`` is ``score_classes[argmax]`` of their bilinear upsampling). The normalisation is inside.
The model's ``ultra`` metadata holds what a runtime needs (:mod:`ultra.deploy.runtime`) and what made the file.
"""

from __future__ import annotations

import json
import logging
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import __version__
from ..data.grids import upsample_scores
from ..errors import CheckpointError, ConfigError, MissingExtra
from ..files import atomic_path, file_digest
from ..readout.checkpoint import load
from ..readout.segmenter import Segmenter, readout_grid_scores
from .runtime import FORMAT, UNMATCHED

log = logging.getLogger(__name__)
MAX_BATCH, MAX_PATCHES = 1024, 512
"""The bounds the exported graph is traced for: images per batch, patches along a side."""


class ExportedSegmenter(nn.Module):
    """One readout of a segmenter as a graph: images in [0, 1] -> (class ids at the images' size, patch scores)."""

    def __init__(self, segmenter: Segmenter, readout: str):
        super().__init__()
        self.backbone, self.readout = segmenter.backbone, segmenter.readouts[readout]
        self.layers, self.kinds = segmenter.token_keys([readout])
        self.register_buffer("score_classes", score_classes(segmenter, readout))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        grids = self.backbone(images, self.layers, self.kinds)
        scores = readout_grid_scores(self.readout, grids)
        pixels = upsample_scores(scores, (images.shape[-2], images.shape[-1]))
        return self.score_classes[pixels.argmax(1)], scores


def score_classes(segmenter: Segmenter, readout: str) -> Tensor:
    """The class id of each output of ``readout``: its matched class (255 for a cluster matched to none), or the
    output's own index where the readout outputs classes or has no matching (as :meth:`Segmenter.to_labels`)."""
    return segmenter.to_labels(torch.arange(segmenter.readouts[readout].num_outputs), readout).long()


def export_metadata(segmenter: Segmenter, readout: str, checkpoint: Path) -> dict:
    """The ``ultra`` metadata of an exported model."""
    backbone = segmenter.backbone
    return {
        "format": FORMAT,
        "ultra_version": __version__,
        "readout": readout,
        "outputs": segmenter.readouts[readout].outputs,
        "classes": list(segmenter.class_names),
        "score_classes": score_classes(segmenter, readout).tolist(),
        "unmatched": UNMATCHED,
        "resize": segmenter.resize,
        "patch_size": backbone.patch_size,
        "input": "images [N, 3, H, W] float32 RGB in [0, 1]; H and W multiples of patch_size",
        "normalisation": {"mean": backbone.mean.flatten().tolist(), "std": backbone.std.flatten().tolist()},
        "backbone": {**backbone.describe(), "precision": "fp32"},
        "checkpoint_sha256": file_digest(checkpoint),
    }


def export(
    checkpoint: str | Path,
    output: str | Path,
    readout: str = "head",
    weights: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint``'s ``readout`` with its backbone as one ONNX file ``output`` (atomically; an existing file
    is kept unless ``overwrite``); ``weights`` as for :func:`ultra.load`. Returns ``output``."""
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists already; pass --overwrite to replace it")
    if output.resolve() == checkpoint.resolve():
        raise ConfigError(f"--output {output} is the checkpoint itself; choose another file")
    require_export_packages()
    import onnx

    segmenter = load(checkpoint, weights=weights, precision="fp32")
    segmenter.require_readout(readout)
    model = ExportedSegmenter(segmenter, readout).eval()
    proto = _onnx_graph(model, segmenter, readout)
    proto.metadata_props.add(key="ultra", value=json.dumps(export_metadata(segmenter, readout, checkpoint)))
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        onnx.save_model(proto, str(tmp))
    log.info("exported readout '%s' of %s to %s", readout, checkpoint, output)
    return output


EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
"""What an export needs: the format, torch's exporter's graph builder, and the runtime that checks nothing is lost."""


def require_export_packages() -> None:
    """Refuse, before any work, an export without :data:`EXPORT_PACKAGES`, naming the extra that brings them."""
    missing = [name for name in EXPORT_PACKAGES if find_spec(name) is None]
    if missing:
        raise MissingExtra(f"ultra-export needs {', '.join(missing)}: pip install 'ultra-seg[onnx]'")


def _onnx_graph(model: ExportedSegmenter, segmenter: Segmenter, readout: str):
    """The traced graph (an ``onnx.ModelProto``), with N dynamic and H, W dynamic multiples of the patch."""
    import onnx

    patch = segmenter.backbone.patch_size
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    rows, cols = (torch.export.Dim(name, min=1, max=MAX_PATCHES) for name in ("rows", "cols"))
    example = torch.rand(2, 3, 2 * patch, 3 * patch, generator=torch.Generator().manual_seed(0))
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            external_data=False,
            input_names=["images"],
            output_names=["labels", "scores"],
            dynamic_shapes={"images": {0: batch, 2: patch * rows, 3: patch * cols}},
            verbose=False,
        )
    except Exception as err:  # the exporter's errors are of many types: name what could not be exported
        raise CheckpointError(
            f"readout '{readout}' ({type(model.readout).__name__}) of backbone {segmenter.backbone.model_name} "
            f"cannot be exported to ONNX: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto
