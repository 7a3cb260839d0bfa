"""Shared fixtures: tiny random ViTs, an isolated cache, no network, one tiny training run (helpers live in
``helpers.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import TINY_VIT, synthetic_config, tiny_overrides

from ultra.cli import train as train_cli
from ultra.head.projection import ProjectionHead


@pytest.fixture(scope="session", autouse=True)
def _float32_backbone_on_every_machine():
    """The suite runs the backbone in float32 on every CPU: ``auto`` would pick bfloat16 on one with AMX or
    AVX512-BF16, and figures compared with float32 references would then depend on the machine CI draws.
    ``tests/test_backbone_precision.py`` runs bfloat16 explicitly (and patches this back to test ``auto``)."""
    from ultra.backbone import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_has_native_bf16", lambda: False)
        yield


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An inference checkpoint on the tiny random ViT: a head readout matched to three named classes, and a raw
    readout without a matching (four clusters)."""
    from ultra.backbone.vit import FrozenViT
    from ultra.readout.checkpoint import save_segmenter
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    torch.manual_seed(0)
    vit = FrozenViT("vit_tiny_patch16_224", weights="random", model_kwargs=TINY_VIT)
    readouts = {
        "head": ClusterReadout([("x", 2)], torch.randn(3, 8), ProjectionHead(48, 8)),
        "raw": ClusterReadout([("x", 2)], torch.randn(4, 48)),
    }
    segmenter = Segmenter(
        vit, readouts, ["sky", "road", "car"], resize=64, cluster_to_class={"head": torch.tensor([0, 1, 2])}
    )
    return save_segmenter(segmenter, tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny training run (synthetic scenes, the tiny ViT) shared by the tests that read its outputs: its folder,
    config and evaluation report."""
    root = tmp_path_factory.mktemp("train")
    config = synthetic_config(root / "tiny.yaml")
    report = train_cli.run(["--config", str(config), *tiny_overrides(root)])
    return root, config, report


@pytest.fixture(scope="session")
def checkpoint(trained):
    """The shared run's inference checkpoint and config."""
    root, config, _ = trained
    return root / "run" / "model.safetensors", config
