"""A frozen timm ViT that returns every requested layer's tokens, queries, keys and values as grids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UnknownModelError
from .image_size import snap_to_patch
from .names import resolve_model_name
from .precision import autocast, check_precision, resolve_precision
from .weights import WeightsInfo, load_weights

KINDS = ("x", "n", "q", "k", "v")
"""Token kinds: ``x`` block output, ``n`` the block output through the model's final LayerNorm (the
normalisation the model's own outputs get), ``q``/``k``/``v`` from the block's fused qkv projection
(heads concatenated)."""
DEFAULT_KINDS = ("x", "q", "k", "v")
"""What a forward pass returns unless told otherwise (``n`` is on request)."""


@dataclass
class ViTFeatures:
    """Per-layer token grids of one batch.

    ``grids[kind][layer]`` is ``[B, h, w, D]`` (patch tokens only); ``prefix[kind][layer]`` is
    ``[B, P, D]`` for the P prefix tokens (CLS, registers).
    """

    grids: dict[str, dict[int, Tensor]] = field(default_factory=dict)
    prefix: dict[str, dict[int, Tensor]] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, int]) -> Tensor:
        kind, layer = key
        try:
            return self.grids[kind][layer]
        except KeyError:
            raise KeyError(f"({kind!r}, {layer}) was not computed; available: {self.keys()}") from None

    def keys(self) -> list[tuple[str, int]]:
        return [(k, layer) for k, layers in self.grids.items() for layer in layers]

    @property
    def grid_size(self) -> tuple[int, int]:
        first = next(iter(next(iter(self.grids.values())).values()))
        return tuple(first.shape[1:3])


@dataclass(frozen=True)
class BackboneShape:
    """A timm ViT's sizes, read without its weights (:func:`backbone_shape`)."""

    model_name: str
    num_layers: int
    embed_dim: int
    patch_size: int

    def check_layers(self, layers: Iterable[int]) -> tuple[int, ...]:
        """``layers`` as sorted, distinct 0-based blocks (negatives count from the end), refused when out of range."""
        return check_layers(layers, self.num_layers, self.model_name)


def meta_model(model_name: str, model_kwargs: dict | None = None) -> nn.Module:
    """The timm model ``model_name`` (an alias or a timm name) as :class:`FrozenViT` builds it, on the ``meta`` device:
    its sizes without memory or weights."""
    import timm

    with torch.device("meta"):
        return timm.create_model(
            resolve_model_name(model_name),
            pretrained=False,
            num_classes=0,
            dynamic_img_size=True,
            **(model_kwargs or {}),
        )


def backbone_shape(model_name: str, model_kwargs: dict | None = None) -> BackboneShape:
    """The sizes of the timm ViT ``model_name`` (:func:`meta_model`): a config is checked before any weights are
    loaded."""
    try:
        model = meta_model(model_name, model_kwargs)
    except TypeError as err:
        raise UnknownModelError(f"'{model_name}' is not a timm ViT accepting these arguments: {err}") from err
    name = resolve_model_name(model_name)
    if getattr(model, "blocks", None) is None:
        raise UnknownModelError(f"'{model_name}' is not a ViT: it has no blocks")
    return BackboneShape(name, len(model.blocks), int(model.embed_dim), int(model.patch_embed.patch_size[0]))


def check_layers(layers: Iterable[int], num_layers: int, model_name: str) -> tuple[int, ...]:
    """``layers`` of a model of ``num_layers`` blocks as sorted, distinct 0-based blocks (negatives count from the
    end); a layer out of range, or none, is refused naming the model."""
    out = []
    for layer in layers:
        if not -num_layers <= int(layer) < num_layers:
            raise ConfigError(
                f"layer {layer} is out of range for {model_name} with {num_layers} blocks "
                f"(0..{num_layers - 1} or -{num_layers}..-1)"
            )
        out.append(int(layer) % num_layers)
    if not out:
        raise ConfigError("no layers requested")
    return tuple(sorted(set(out)))


class FrozenViT(nn.Module):
    """Any timm ViT, frozen, in eval mode, without gradients, accepting any image size that is a multiple of its patch.

    ``forward(images)`` takes RGB images in [0, 1] (``[B, 3, H, W]``), normalises them with the
    model's mean/std and returns a :class:`ViTFeatures` holding, for the requested layers
    (0-based block indices, negatives count from the end) and kinds, the patch-token grids.
    Only the requested tensors are kept; blocks after the deepest requested layer are not run.
    ``weights`` is a source (see :mod:`ultra.backbone.weights`) or a file; ``model_kwargs`` go to ``timm.create_model``.
    ``precision`` (``auto``, ``bf16``, ``fp32``; :mod:`ultra.backbone.precision`) is the arithmetic of the forward
    pass; the tokens it returns are float32 either way.
    """

    def __init__(
        self,
        model_name: str,
        weights: str | Path = "auto",
        layers: Sequence[int] | None = None,
        kinds: Iterable[str] = DEFAULT_KINDS,
        model_kwargs: dict | None = None,
        precision: str = "auto",
    ) -> None:
        super().__init__()
        import timm

        self.precision = check_precision(precision)
        self.model_name = resolve_model_name(model_name)
        self.model_kwargs = dict(model_kwargs or {})
        try:
            with torch.random.fork_rng(devices=[]):  # "random" weights are the same every time (seed 0)
                torch.manual_seed(0)
                self.model = timm.create_model(
                    self.model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **self.model_kwargs
                )
        except TypeError as err:
            raise UnknownModelError(f"'{model_name}' is not a timm ViT accepting these arguments: {err}") from err
        blocks = getattr(self.model, "blocks", None)
        if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
            raise UnknownModelError(f"'{model_name}' is not a ViT: its blocks lack a fused attn.qkv projection")
        self.weights_info: WeightsInfo = load_weights(self.model, self.model_name, weights)
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.layers = self.check_layers(range(self.num_layers) if layers is None else layers)
        self.kinds = self.check_kinds(kinds)

    # --- description -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def compute_precision(self) -> str:
        """``bf16`` or ``fp32``: the arithmetic the forward pass runs in on the backbone's current device."""
        return resolve_precision(self.precision, self.mean.device)

    def describe(self, device: torch.device | str | None = None) -> dict:
        """JSON-able identity of this backbone and the arithmetic its tokens come from on ``device`` (default: where
        it is now); used in cache keys and checkpoints."""
        return {
            "model": self.model_name,
            "model_kwargs": self.model_kwargs,
            "weights": self.weights_info.as_dict(),
            "precision": resolve_precision(self.precision, device or self.mean.device),
        }

    def train(self, mode: bool = True) -> FrozenViT:
        """The backbone stays in eval mode whatever the caller asks."""
        return super().train(False)

    # --- validation --------------------------------------------------------------------------
    def check_layers(self, layers: Iterable[int]) -> tuple[int, ...]:
        return check_layers(layers, self.num_layers, self.model_name)

    @staticmethod
    def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
        kinds = tuple(dict.fromkeys(kinds))
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ConfigError(f"token kinds must be among {KINDS}, got {list(kinds)}")
        return kinds

    def check_images(self, images: Tensor) -> tuple[int, int]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        p = self.patch_size
        if h < p or w < p:
            raise ConfigError(f"image of {h}x{w} px is smaller than one {p}x{p} patch of {self.model_name}")
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {p}; resize to {snap_to_patch((h, w), p)}"
            )
        return h // p, w // p

    # --- forward -----------------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    @torch.no_grad()
    def forward(
        self, images: Tensor, layers: Sequence[int] | None = None, kinds: Iterable[str] | None = None
    ) -> ViTFeatures:
        h, w = self.check_images(images)
        layers = self.layers if layers is None else self.check_layers(layers)
        kinds = self.kinds if kinds is None else self.check_kinds(kinds)
        out = ViTFeatures()
        captured: dict[int, Tensor] = {}
        hooks = []
        if {"q", "k", "v"} & set(kinds):
            for layer in layers:
                hooks.append(self.model.blocks[layer].attn.qkv.register_forward_hook(_capture(captured, layer)))
        index = sorted(set(layers) | {max(layers)})  # run up to the deepest requested layer only
        try:
            with autocast(self.compute_precision, self.mean.device):
                result = self.model.forward_intermediates(
                    self.normalize(images),
                    indices=index,
                    return_prefix_tokens=True,
                    norm=False,
                    stop_early=True,
                    output_fmt="NLC",
                    intermediates_only=True,
                    output_dict=True,
                )
        finally:
            for hook in hooks:
                hook.remove()
        b, p = images.shape[0], self.num_prefix_tokens
        blocks = [t.float() for t in result["image_intermediates"]]
        prefixes = [t.float() for t in result.get("image_intermediates_prefix") or [t[:, :0] for t in blocks]]
        captured = {layer: t.float() for layer, t in captured.items()}
        for kind in {"x", "n"} & set(kinds):
            norm = self.model.norm if kind == "n" else nn.Identity()
            out.grids[kind] = {layer: norm(blocks[index.index(layer)]).reshape(b, h, w, -1) for layer in layers}
            out.prefix[kind] = {layer: norm(prefixes[index.index(layer)]) for layer in layers}
        for j, kind in enumerate("qkv"):
            if kind in kinds:
                parts = {layer: captured[layer].chunk(3, dim=-1)[j] for layer in layers}
                out.grids[kind] = {layer: t[:, p:].reshape(b, h, w, -1) for layer, t in parts.items()}
                out.prefix[kind] = {layer: t[:, :p] for layer, t in parts.items()}
        return out

    @torch.no_grad()
    def token_grids(
        self, images: Tensor, layers: Sequence[int] | None = None, kinds: Iterable[str] | None = None
    ) -> ViTFeatures:
        """:meth:`forward` of images in [0, 1] of any size: resized (bilinear, antialiased) to the nearest multiple
        of the patch when they are not one already, and moved to the backbone's device."""
        size = snap_to_patch(tuple(images.shape[-2:]), self.patch_size)
        if size != tuple(images.shape[-2:]):
            images = nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self(images.to(self.mean.device), layers=layers, kinds=kinds)

    def collect_grids(
        self,
        batches: Iterable[Tensor],
        keys: Sequence[tuple[str, int]],
        dtype: torch.dtype = torch.float16,
        progress: bool = False,
    ) -> dict[tuple[str, int], Tensor]:
        """The ``keys`` token grids ``{(kind, layer): [images, h, w, D]}`` of batches of images in [0, 1] (all of
        one size), in ``dtype`` on the CPU: a set's tokens held at once (analysis, benchmarks)."""
        from tqdm.auto import tqdm

        layers, kinds = sorted({layer for _, layer in keys}), sorted({kind for kind, _ in keys})
        store: dict[tuple[str, int], list[Tensor]] = {tuple(key): [] for key in keys}
        for images in tqdm(batches, desc="backbone", disable=not progress):
            feats = self.token_grids(images, layers, kinds)
            for key in store:
                store[key].append(feats[key].to("cpu", dtype))
        return {key: torch.cat(grids) for key, grids in store.items()}


def _capture(store: dict[int, Tensor], layer: int):
    def hook(_module, _inputs, output):
        store[layer] = output

    return hook
