"""Segmenting images with a trained head: the backbone and its readouts as one module.

A :class:`Segmenter` holds the frozen backbone and one or more readouts: ``head`` (the trained
head, then cosine to its k-means centroids), ``raw``, ``raw_centred`` and ``raw_whitened`` (cosine
of the raw, centred or PCA-whitened tokens to their own centroids: the no-head baselines) and
``probe`` (a supervised linear probe, class scores).
Scores on the token grid are upsampled bilinearly to pixels and the argmax is the segment;
when the checkpoint knows the Hungarian matching of an evaluation, clusters are reported as
class ids (unmatched clusters as 255).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..backbone.image_size import check_resized_side, resize_to_patches
from ..backbone.vit import FrozenViT
from ..data.cache import TokenKey
from ..data.grids import upsample_scores
from ..data.io import picture_array, read_image
from ..data.transforms import image_to_tensor
from ..errors import ConfigError
from ..head.projection import ProjectionHead
from .crf import crf_labels

MAX_CLUSTERS = 255
"""The most clusters a readout may have: label maps are 8-bit PNGs, ids 0-254, and 255 marks unmatched pixels."""


def apply_matching(predictions: Tensor, cluster_to_class: Tensor, unmatched: int = 255) -> Tensor:
    """Cluster ids -> matched class ids (``unmatched`` for clusters matched to no class)."""
    table = torch.where(cluster_to_class >= 0, cluster_to_class, unmatched).to(predictions.device)
    return table[predictions]


class ClusterReadout(nn.Module):
    """Cosine of the tokens to k-means centroids, ``[..., D] -> [..., K]``: the tokens optionally through an affine
    ``token_map`` first (centring or whitening, :func:`ultra.data.standardise.token_map`), then the ``head``."""

    outputs = "clusters"

    def __init__(
        self,
        keys: Sequence[TokenKey],
        centroids: Tensor,
        head: ProjectionHead | None = None,
        token_map: nn.Linear | None = None,
    ):
        super().__init__()
        self.keys = [tuple(k) for k in keys]
        self.head, self.token_map = head, token_map
        self.register_buffer("centroids", F.normalize(centroids.float(), dim=-1))

    @property
    def num_outputs(self) -> int:
        return self.centroids.shape[0]

    def forward(self, tokens: Tensor) -> Tensor:
        z = self.token_map(tokens) if self.token_map is not None else tokens
        z = self.head(z) if self.head is not None else z
        return F.normalize(z, dim=-1) @ self.centroids.T

    # --- its part of the checkpoint (header entry and tensors; read back by from_config) ----------------------
    def config(self) -> dict:
        entry = {"outputs": self.outputs, "keys": [list(k) for k in self.keys]}
        if self.head is not None:
            entry["head"] = self.head.config()
        if self.token_map is not None:
            entry["token_map"] = {"dim": self.token_map.in_features}
        return entry

    def tensors(self) -> dict[str, Tensor]:
        tensors = {"centroids": self.centroids}
        for part in ("head", "token_map"):
            if getattr(self, part) is not None:
                tensors.update({f"{part}.{k}": v for k, v in getattr(self, part).state_dict().items()})
        return tensors

    @classmethod
    def from_config(cls, entry: dict, tensors: Mapping[str, Tensor]) -> ClusterReadout:
        """The readout of a checkpoint's header ``entry`` and its own ``tensors`` (names without its prefix)."""
        head = token_map = None
        if "head" in entry:
            head = ProjectionHead(**entry["head"])
            head.load_state_dict(tensors_under(tensors, "head"))
        if "token_map" in entry:
            token_map = nn.Linear(entry["token_map"]["dim"], entry["token_map"]["dim"])
            token_map.load_state_dict(tensors_under(tensors, "token_map"))
        return cls(entry["keys"], tensors["centroids"], head, token_map)


class ProbeReadout(nn.Module):
    """A linear classifier of tokens: ``[N, D] -> [N, classes]`` logits."""

    outputs = "classes"

    def __init__(self, keys: Sequence[TokenKey], probe: nn.Linear):
        super().__init__()
        self.keys = [tuple(k) for k in keys]
        self.probe = probe

    @property
    def num_outputs(self) -> int:
        return self.probe.out_features

    def forward(self, tokens: Tensor) -> Tensor:
        return self.probe(tokens)

    def config(self) -> dict:
        return {"outputs": self.outputs, "keys": [list(k) for k in self.keys]}

    def tensors(self) -> dict[str, Tensor]:
        return {f"probe.{k}": v for k, v in self.probe.state_dict().items()}

    @classmethod
    def from_config(cls, entry: dict, tensors: Mapping[str, Tensor]) -> ProbeReadout:
        weight = tensors["probe.weight"]
        probe = nn.Linear(weight.shape[1], weight.shape[0])
        probe.load_state_dict(tensors_under(tensors, "probe"))
        return cls(entry["keys"], probe)


READOUT_CLASSES = {cls.outputs: cls for cls in (ClusterReadout, ProbeReadout)}
"""The readout classes by what they output (a checkpoint entry's ``outputs``): each writes and reads its own part of
the checkpoint (``config`` / ``tensors`` / ``from_config``)."""


def tensors_under(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors named ``<prefix>.<name>``, as ``<name>``."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


class Segmenter(nn.Module):
    """Backbone + readouts. ``segment(image)`` gives a label map at the image's size."""

    def __init__(
        self,
        backbone: FrozenViT,
        readouts: Mapping[str, nn.Module],
        class_names: Sequence[str],
        resize: int = 320,
        cluster_to_class: Mapping[str, Tensor] | None = None,
    ):
        super().__init__()
        if not readouts:
            raise ValueError("a segmenter needs at least one readout")
        self.backbone = backbone
        self.readouts = nn.ModuleDict(readouts)
        self.class_names = tuple(class_names)
        self.resize = resize
        self.cluster_to_class = {k: v.long().cpu() for k, v in (cluster_to_class or {}).items()}

    @property
    def device(self) -> torch.device:
        return self.backbone.mean.device

    def token_keys(self, readouts: Sequence[str] | None = None) -> tuple[list[int], list[str]]:
        """The backbone layers and token kinds that ``readouts`` (default all) read."""
        keys = {key for name in (readouts or self.readouts) for key in self.readouts[name].keys}
        return sorted({layer for _, layer in keys}), sorted({kind for kind, _ in keys})

    def tokens(self, images: Tensor, layers: Sequence[int] | None = None, kinds: Sequence[str] | None = None):
        """The backbone's token grids of images in [0, 1] (:meth:`~ultra.backbone.vit.FrozenViT.token_grids`), by
        default of the layers and kinds every readout reads."""
        all_layers, all_kinds = self.token_keys()
        return self.backbone.token_grids(images, layers=layers or all_layers, kinds=kinds or all_kinds)

    @torch.no_grad()
    def grid_scores(self, images: Tensor, readouts: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Scores ``[B, K, h, w]`` of ``readouts`` (default all) for images in [0, 1] (resized to a multiple of the
        patch if needed)."""
        chosen = {name: self.readouts[name] for name in (readouts or self.readouts)}
        feats = self.tokens(images, *self.token_keys(list(chosen)))
        return {name: readout_grid_scores(readout, feats) for name, readout in chosen.items()}

    @torch.no_grad()
    def pixel_scores(
        self,
        images: Tensor,
        size: tuple[int, int] | None = None,
        flip: bool = False,
        readouts: Sequence[str] | None = None,
    ) -> dict[str, Tensor]:
        """Scores of ``readouts`` (default all) upsampled to ``size`` (default: the images' size); ``flip`` averages
        with the mirrored image."""
        scores = self.grid_scores(images, readouts)
        if flip:
            mirrored = self.grid_scores(images.flip(-1), readouts)
            scores = {k: (v + mirrored[k].flip(-1)) / 2 for k, v in scores.items()}
        size = size or tuple(images.shape[-2:])
        return {k: upsample_scores(v, size) for k, v in scores.items()}

    def to_labels(self, predictions: Tensor, readout: str) -> Tensor:
        """Cluster ids -> class ids when this readout's matching is known (unmatched clusters -> 255)."""
        if self.readouts[readout].outputs == "clusters" and readout in self.cluster_to_class:
            return apply_matching(predictions, self.cluster_to_class[readout])
        return predictions

    def require_readout(self, readout: str) -> None:
        """Refuse a readout this segmenter does not have, naming those it has."""
        if readout not in self.readouts:
            raise ConfigError(f"no readout '{readout}' in this segmenter (has {list(self.readouts)})")

    def segment(self, image, readout: str = "head", crf: bool = False, flip: bool = False) -> Tensor:
        """Label map ``[H, W]`` of one image (PIL image, file path, or tensor ``[3, H, W]`` in [0, 1] or uint8)."""
        self.require_readout(readout)
        tensor = as_image_tensor(image)
        height, width = tensor.shape[-2:]
        check_resized_side(
            (height, width), self.resize, f"image {image}" if isinstance(image, (str, Path)) else "the image"
        )
        small = resize_to_patches(tensor[None], self.resize, self.backbone.patch_size)
        scores = self.pixel_scores(small, size=(height, width), flip=flip, readouts=[readout])[readout][0]
        labels = crf_labels(tensor[None], scores[None])[0].cpu() if crf else scores.argmax(0).cpu()
        return self.to_labels(labels, readout)


def readout_grid_scores(readout: nn.Module, grids) -> Tensor:
    """Scores ``[B, K, h, w]`` of a readout for token grids (a :class:`~ultra.backbone.vit.ViTFeatures` or a mapping
    ``{(kind, layer): [B, h, w, D]}``): its keys' tokens concatenated, then the readout."""
    tokens = torch.cat([grids[tuple(key)].float() for key in readout.keys], -1)
    return readout(tokens).permute(0, 3, 1, 2)


def as_image_tensor(image) -> Tensor:
    """A PIL image or file path (both turned as their EXIF orientation says, transparency on white), or a
    ``[3, H, W]`` tensor (uint8, or float in [0, 1]) as float ``[3, H, W]``; other tensors are refused."""
    if isinstance(image, (str, Path)):
        return image_to_tensor(read_image(image, orient=True))
    if isinstance(image, Image.Image):
        return image_to_tensor(picture_array(image, orient=True))
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be [3, H, W], got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255
        if not image.is_floating_point():
            raise ValueError(f"an image tensor must be uint8 (0-255) or float in [0, 1], got {image.dtype}")
        if not bool(torch.isfinite(image).all()) or image.min() < 0 or image.max() > 1:
            low, high = float(image.nan_to_num(0).min()), float(image.nan_to_num(0).max())
            raise ValueError(
                f"a float image tensor must hold values in [0, 1] without NaN, got {low:g} to {high:g}"
                + ("" if torch.isfinite(image).all() else " and non-finite values")
                + " (divide 0-255 values by 255)"
            )
        return image.float()
    raise TypeError(f"cannot segment a {type(image).__name__}: give a PIL image, a path or a [3, H, W] tensor")
