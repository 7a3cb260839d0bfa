"""ultra: unsupervised semantic segmentation and spectral analysis of frozen vision transformers."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_EXPORTS = {"FrozenViT": "backbone", "ViTFeatures": "backbone", "Segmenter": "inference", "load": "inference"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    """The public names, imported on first use (``import ultra.graph`` does not pull in timm and torchvision)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ultra' has no attribute '{name}'")
