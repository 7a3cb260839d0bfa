"""Deployment: an inference checkpoint as one ONNX file, and that file run without torch.

- ``export``: :func:`export` (``ultra-export``, ``ultra.export``) traces a readout with its backbone to ONNX.
- ``runtime``: :class:`OnnxSegmenter` runs an exported file in onnxruntime with numpy and PIL only.
- ``engines``: what ``ultra-segment`` segments with: a checkpoint in torch, or an exported file in onnxruntime.
"""

from .._lazy import lazy_attributes

_EXPORTS = {"export": "export", "OnnxSegmenter": "runtime"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_attributes(__name__, _EXPORTS)
