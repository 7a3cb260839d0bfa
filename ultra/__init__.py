"""ultra: unsupervised semantic segmentation and spectral analysis of frozen vision transformers.

The public names are imported on first use: ``import ultra.graphs.sparse`` does not pull in timm and torchvision.
"""

from ._lazy import lazy_attributes

__version__ = "0.1.0"
_EXPORTS = {
    "FrozenViT": "backbone.vit",
    "ViTFeatures": "backbone.vit",
    "Segmenter": "readout.segmenter",
    "load": "readout.checkpoint",
    "export": "deploy.export",
    "OnnxSegmenter": "deploy.runtime",
}
__all__ = [*_EXPORTS, "__version__"]
__getattr__ = lazy_attributes(__name__, _EXPORTS)
