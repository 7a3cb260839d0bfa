"""Validation of an inference checkpoint's header and tensors before anything is built from them.

A checkpoint comes from anywhere: nothing in its header is trusted. Model keyword arguments are
limited to architecture sizes (no file paths or pretrained configs reach ``timm.create_model``),
every size is bounded before memory is allocated, every tensor must be present with the shape its
readout implies, and the class list, matching and resize must be consistent.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..backbone.names import resolve_model_name
from ..backbone.vit import KINDS, meta_model
from ..errors import HeaderError, UnknownModelError
from ..head.projection import ARCHITECTURES, head_tensor_shapes
from .segmenter import MAX_CLUSTERS

MODEL_KWARGS = {
    "depth": (int, 1, 64),
    "embed_dim": (int, 1, 8192),
    "num_heads": (int, 1, 128),
    "patch_size": (int, 1, 64),
    "img_size": (int, 1, 4096),
    "reg_tokens": (int, 0, 64),
    "mlp_ratio": (float, 0, 16),
    "init_values": (float, 0, 10),
    "class_token": (bool,),
    "no_embed_class": (bool,),
    "qkv_bias": (bool,),
}
"""The model keyword arguments a checkpoint may carry (architecture sizes only): type and bounds of each, so that
no file path reaches ``timm.create_model``. Together they are bounded by what they multiply out to (below)."""
MAX_PARAMETERS = 5_000_000_000
"""The largest backbone a checkpoint may describe: above ViT-e (4.4 B parameters; DINOv2's ViT-g has 1.1 B)."""
MAX_TOKENS = 128 * 128
"""The most patch tokens per image, at the checkpoint's resize and in the position embedding (a 128 x 128 grid:
1792 px at patch 14; DINOv2 trains at 37 x 37)."""
MAX_DIM = 1 << 16
MAX_RESIZE = 4096


def check_model_kwargs(kwargs, where: str) -> dict:
    """Raise :class:`HeaderError` unless every model keyword argument is allowed and within its bounds."""
    if not isinstance(kwargs, dict):
        raise HeaderError(f"{where}: model_kwargs must be a mapping, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key not in MODEL_KWARGS:
            raise HeaderError(
                f"{where}: model_kwargs '{key}' is not allowed in a checkpoint (allowed: {sorted(MODEL_KWARGS)})"
            )
        value_type, *bounds = MODEL_KWARGS[key]
        field = f"model_kwargs '{key}'"
        if value_type is bool:
            if not isinstance(value, bool):
                raise HeaderError(f"{where}: {field} must be true or false, got {value!r}")
        elif value_type is int:
            _int_in(value, *bounds, field, where)
        elif not (key == "init_values" and value is None):
            low, high = bounds
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                raise HeaderError(f"{where}: {field} must be a number in ({low}, {high}], got {value!r}")
    if "embed_dim" in kwargs and "num_heads" in kwargs and kwargs["embed_dim"] % kwargs["num_heads"]:
        raise HeaderError(
            f"{where}: model_kwargs embed_dim {kwargs['embed_dim']} is not a multiple of num_heads "
            f"{kwargs['num_heads']}"
        )
    return kwargs


def check_model_size(model: str, kwargs: dict, resize: int, where: str) -> None:
    """Raise :class:`HeaderError` when the backbone the checkpoint describes (built on the ``meta`` device: no memory)
    has more than :data:`MAX_PARAMETERS` parameters, or more than :data:`MAX_TOKENS` patch tokens per image at
    ``resize`` or in its position embedding."""
    try:
        vit = meta_model(model, kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise HeaderError(f"{where}: backbone {model} cannot be built with model_kwargs {kwargs}: {err}") from None
    parameters = sum(p.numel() for p in vit.parameters())
    if parameters > MAX_PARAMETERS:
        raise HeaderError(
            f"{where}: backbone {model} with model_kwargs {kwargs} has {parameters / 1e9:.1f} billion parameters, "
            f"more than the {MAX_PARAMETERS / 1e9:.0f} billion a checkpoint may describe"
        )
    patch = vit.patch_embed.patch_size
    grid = vit.patch_embed.grid_size
    for what, tokens in (
        (f"at its resize {resize} px", (resize // patch[0]) * (resize // patch[1])),
        ("in its position embedding", grid[0] * grid[1]),
    ):
        if tokens > MAX_TOKENS:
            raise HeaderError(
                f"{where}: backbone {model} with model_kwargs {kwargs} makes {tokens} patch tokens per image {what}, "
                f"more than {MAX_TOKENS}"
            )


def _int_in(value, low: int, high: int, field: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HeaderError(f"{where}: {field} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _shape(tensors: dict[str, Tensor], name: str, shape: tuple, where: str) -> None:
    if name not in tensors:
        raise HeaderError(f"{where}: tensor '{name}' is missing")
    if tuple(tensors[name].shape) != shape:
        raise HeaderError(f"{where}: tensor '{name}' is {tuple(tensors[name].shape)}, {shape} expected")


OLD_KEYS = {"kind": "outputs"}
"""Keys of a readout entry written by ultra 0.1 before the rename, read as their new names."""
OLD_HEAD_KEYS = {"kind": "architecture"}


def upgrade_header(meta: dict) -> dict:
    """Rename, in place, the keys older checkpoints wrote (a readout's ``kind``, its head's ``kind``)."""
    for entry in (meta.get("readouts") or {}).values() if isinstance(meta.get("readouts"), dict) else ():
        if isinstance(entry, dict):
            _rename(entry, OLD_KEYS)
            if isinstance(entry.get("head"), dict):
                _rename(entry["head"], OLD_HEAD_KEYS)
    return meta


def _rename(entry: dict, names: dict[str, str]) -> None:
    for old, new in names.items():
        if old in entry and new not in entry:
            entry[new] = entry.pop(old)


def check_header(meta: dict, tensors: dict[str, Tensor], path: str | Path) -> None:
    """Raise :class:`HeaderError` (naming ``path`` and the field) unless the checkpoint is consistent.

    What depends on the backbone (its depth and token dimension) is checked once it is built, by
    :func:`check_token_keys`.
    """
    where = str(path)
    upgrade_header(meta)
    _check_backbone(meta.get("backbone"), where)
    classes = meta.get("classes")
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) for c in classes)
        or len(classes) > 255
    ):
        raise HeaderError(f"{where}: classes must be a list of 1 to 255 names")
    if len(set(classes)) != len(classes):
        raise HeaderError(f"{where}: classes must be distinct names, got {classes}")
    resize = _int_in(meta.get("resize", 320), 1, MAX_RESIZE, "resize", where)
    check_model_size(meta["backbone"]["model"], meta["backbone"].get("model_kwargs") or {}, resize, where)
    readouts = meta.get("readouts")
    if not isinstance(readouts, dict) or not readouts:
        raise HeaderError(f"{where}: readouts must be a non-empty mapping")
    matchings = meta.get("cluster_to_class", {})
    if not isinstance(matchings, dict):
        raise HeaderError(
            f"{where}: cluster_to_class must be a mapping of readout names to class ids, got {type(matchings).__name__}"
        )
    expected = set()
    for name, entry in readouts.items():
        expected |= _check_readout(name, entry, tensors, classes, matchings.get(name), where)
    unmatched = sorted(set(matchings) - {n for n, e in readouts.items() if e["outputs"] == "clusters"})
    if unmatched:
        raise HeaderError(
            f"{where}: cluster_to_class.{unmatched[0]} matches clusters of no clustering readout "
            f"(readouts: {sorted(readouts)})"
        )
    unknown = set(tensors) - expected
    if unknown:
        raise HeaderError(f"{where}: tensors {sorted(unknown)[:3]} belong to no readout")
    broken = sorted(
        name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    )
    if broken:
        raise HeaderError(
            f"{where}: tensor '{broken[0]}' holds NaN or infinite values (every pixel would get one class)"
        )


def _check_backbone(backbone, where: str) -> None:
    if (
        not isinstance(backbone, dict)
        or not isinstance(backbone.get("model"), str)
        or not isinstance(backbone.get("weights"), dict)
    ):
        raise HeaderError(f"{where}: backbone must name a model and its weights")
    try:
        resolve_model_name(backbone["model"])
    except UnknownModelError as err:
        raise HeaderError(f"{where}: backbone.model '{backbone['model']}' is not a timm model ({err})") from None
    if not all(isinstance(backbone["weights"].get(k), str) for k in ("source", "location", "digest")):
        raise HeaderError(f"{where}: backbone.weights must give its source, location and digest as strings")
    check_model_kwargs(backbone.get("model_kwargs") or {}, where)


def _check_readout(name: str, entry, tensors: dict[str, Tensor], classes: list, matching, where: str) -> set[str]:
    """Check one readout's entry and tensors; returns the names of its tensors."""
    field = f"readouts.{name}"
    if not isinstance(entry, dict) or entry.get("outputs") not in ("clusters", "classes"):
        raise HeaderError(f"{where}: {field}.outputs must be 'clusters' or 'classes'")
    keys = entry.get("keys")
    if (
        not isinstance(keys, list)
        or not keys
        or not all(
            isinstance(k, list) and len(k) == 2 and k[0] in KINDS and type(k[1]) is int and k[1] >= 0 for k in keys
        )
    ):
        raise HeaderError(f"{where}: {field}.keys must be a list of [token kind in {KINDS}, layer (0-based block)]")
    if entry["outputs"] == "classes":
        weight = tensors.get(f"{name}.probe.weight")
        if weight is None or weight.ndim != 2:
            raise HeaderError(f"{where}: tensor '{name}.probe.weight' is missing or not a matrix")
        if weight.shape[0] != len(classes):
            raise HeaderError(f"{where}: {field} scores {weight.shape[0]} classes, the header lists {len(classes)}")
        _shape(tensors, f"{name}.probe.bias", (len(classes),), where)
        return {f"{name}.probe.weight", f"{name}.probe.bias"}
    centroids = tensors.get(f"{name}.centroids")
    if centroids is None or centroids.ndim != 2 or not 1 <= centroids.shape[0] <= MAX_CLUSTERS:
        raise HeaderError(
            f"{where}: tensor '{name}.centroids' is missing or not a [clusters, dim] matrix of 1 to "
            f"{MAX_CLUSTERS} clusters"
        )
    expected = {f"{name}.centroids"}
    token_dim = _check_token_map(name, entry.get("token_map"), tensors, expected, where)
    head = entry.get("head")
    if head is not None:
        _check_head(name, head, tensors, centroids.shape[1], token_dim, expected, where)
    elif token_dim is not None and centroids.shape[1] != token_dim:
        raise HeaderError(
            f"{where}: {name}.centroids are {centroids.shape[1]}-d, the token map gives {token_dim}-d tokens"
        )
    if matching is not None:
        if (
            not isinstance(matching, list)
            or len(matching) != centroids.shape[0]
            or not all(isinstance(c, int) and -1 <= c < len(classes) for c in matching)
        ):
            raise HeaderError(
                f"{where}: cluster_to_class.{name} must give each of the {centroids.shape[0]} clusters "
                f"a class in [0, {len(classes) - 1}] or -1"
            )
    return expected


def _check_token_map(name: str, token_map, tensors: dict[str, Tensor], expected: set, where: str) -> int | None:
    """Check a readout's token map (if any); returns its dimension."""
    if token_map is None:
        return None
    if not isinstance(token_map, dict) or set(token_map) != {"dim"}:
        raise HeaderError(f"{where}: readouts.{name}.token_map must give its dim")
    dim = _int_in(token_map["dim"], 1, MAX_DIM, f"readouts.{name}.token_map.dim", where)
    for suffix, shape in {"weight": (dim, dim), "bias": (dim,)}.items():
        _shape(tensors, f"{name}.token_map.{suffix}", shape, where)
        expected.add(f"{name}.token_map.{suffix}")
    return dim


def _check_head(
    name: str, head, tensors: dict[str, Tensor], centroid_dim: int, token_dim: int | None, expected: set, where: str
) -> None:
    field = f"readouts.{name}.head"
    if (
        not isinstance(head, dict)
        or head.get("architecture") not in ARCHITECTURES
        or set(head) != {"in_dim", "out_dim", "architecture", "hidden_dim"}
    ):
        raise HeaderError(
            f"{where}: {field} must give in_dim, out_dim, architecture (one of {ARCHITECTURES}) and hidden_dim"
        )
    d_in, d_out, hidden = (
        _int_in(head[k], 1, MAX_DIM, f"{field}.{k}", where) for k in ("in_dim", "out_dim", "hidden_dim")
    )
    shapes = head_tensor_shapes(head["architecture"], d_in, d_out, hidden)
    for suffix, shape in shapes.items():
        _shape(tensors, f"{name}.head.{suffix}", shape, where)
        expected.add(f"{name}.head.{suffix}")
    if centroid_dim != d_out:
        raise HeaderError(f"{where}: {name}.centroids are {centroid_dim}-d, the head gives {d_out}-d embeddings")
    if token_dim is not None and token_dim != d_in:
        raise HeaderError(f"{where}: readouts.{name}.token_map gives {token_dim}-d tokens, the head takes {d_in}-d")


def readout_input_dim(name: str, entry: dict, tensors: dict[str, Tensor]) -> int:
    """The token dimension a (header-checked) readout expects: its token map's, its head's, its probe's or its
    centroids'."""
    if entry["outputs"] == "classes":
        return int(tensors[f"{name}.probe.weight"].shape[1])
    if entry.get("token_map") is not None:
        return int(entry["token_map"]["dim"])
    if entry.get("head") is not None:
        return int(entry["head"]["in_dim"])
    return int(tensors[f"{name}.centroids"].shape[1])


def check_token_keys(meta: dict, tensors: dict[str, Tensor], depth: int, embed_dim: int, path: str | Path) -> None:
    """Raise :class:`HeaderError` unless every readout's layers exist in a backbone of ``depth`` blocks and its
    input dimension is that of its tokens (``embed_dim`` per token key)."""
    model = meta["backbone"]["model"]
    for name, entry in meta["readouts"].items():
        layers = [layer for _, layer in entry["keys"]]
        if not all(layer < depth for layer in layers):
            raise HeaderError(f"{path}: readouts.{name}.keys name layers {layers}, {model} has {depth} blocks")
        dim, expected = readout_input_dim(name, entry, tensors), embed_dim * len(entry["keys"])
        if dim != expected:
            raise HeaderError(
                f"{path}: readouts.{name} expects {dim}-d tokens, {model} gives {expected}-d "
                f"({len(entry['keys'])} x {embed_dim})"
            )
