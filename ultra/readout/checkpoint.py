"""The inference checkpoint: one safetensors file with a JSON header, written and loaded without pickle.

:func:`save_segmenter` writes a :class:`~ultra.readout.segmenter.Segmenter` (not the backbone's
weights: the header names them and records their digest); :func:`load` checks every header field
and tensor shape (:mod:`ultra.readout.checkpoint_header`) before it builds anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..backbone.vit import FrozenViT
from ..errors import CheckpointError, HeaderError
from ..files import atomic_path
from .checkpoint_header import check_header, check_token_keys
from .segmenter import READOUT_CLASSES, Segmenter, tensors_under

FORMAT = "ultra-segmenter"
VERSION = 1


def save_segmenter(segmenter: Segmenter, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``segmenter`` (without the backbone's weights) as one safetensors file with its description in the
    header."""
    from safetensors.torch import save_file

    readouts = {name: readout.config() for name, readout in segmenter.readouts.items()}
    tensors = {f"{name}.{k}": v for name, readout in segmenter.readouts.items() for k, v in readout.tensors().items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": segmenter.backbone.describe(),
        "readouts": readouts,
        "classes": list(segmenter.class_names),
        "resize": segmenter.resize,
        "cluster_to_class": {k: v.tolist() for k, v in segmenter.cluster_to_class.items()},
        **(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp),
            metadata={"ultra": json.dumps(meta)},
        )
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """The description and tensors of an inference checkpoint, with clear errors for wrong or broken files."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint file in it (model.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or another format): {err}"
        ) from err
    try:
        meta = json.loads(metadata["ultra"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path} is a safetensors file but not an ultra inference checkpoint (no 'ultra' header)"
        ) from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'ultra' header is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: format {meta.get('format')} v{meta.get('version')}, expected {FORMAT} v{VERSION}"
        )
    return meta, tensors


def load(
    path: str | Path, device: str | torch.device = "cpu", weights: str | Path | None = None, precision: str = "auto"
) -> Segmenter:
    """Load an inference checkpoint written by :func:`save_segmenter` (``ultra.load``).

    The backbone is rebuilt from the recorded model name and weight source (or ``weights``, a
    source or file); its weights must be the ones the checkpoint was trained with. A checkpoint never
    chooses which local file is read: one trained on a weights file needs that file as ``weights``. ``precision`` is
    the backbone's arithmetic here (:mod:`ultra.backbone.precision`), whatever the checkpoint was trained with.
    """
    meta, tensors = read_checkpoint(path)
    try:
        check_header(meta, tensors, path)
    except HeaderError as err:
        raise CheckpointError(str(err)) from None
    recorded = meta["backbone"]
    source = weights or _recorded_source(recorded["weights"], path)
    backbone = FrozenViT(
        recorded["model"], weights=source, model_kwargs=recorded.get("model_kwargs"), precision=precision
    )
    loaded = backbone.weights_info
    if loaded.digest != recorded["weights"]["digest"]:
        raise CheckpointError(
            f"{path} was trained on {recorded['model']} with weights {recorded['weights']['source']}:"
            f"{recorded['weights']['location']} (digest {recorded['weights']['digest']}), but the backbone loaded "
            f"{loaded.source}:{loaded.location} (digest {loaded.digest}); pass the original weights"
        )
    try:
        check_token_keys(meta, tensors, backbone.num_layers, backbone.embed_dim, path)
    except HeaderError as err:
        raise CheckpointError(str(err)) from None
    readouts = {
        name: READOUT_CLASSES[entry["outputs"]].from_config(entry, tensors_under(tensors, name))
        for name, entry in meta["readouts"].items()
    }
    matching = {k: torch.tensor(v) for k, v in meta.get("cluster_to_class", {}).items()}
    return Segmenter(backbone, readouts, meta["classes"], meta.get("resize", 320), matching).to(device).eval()


def _recorded_source(info: dict, path) -> str:
    if info["source"] == "file":
        name = Path(info["location"]).name
        raise CheckpointError(
            f"{path} was trained on backbone weights from a file ({name}, digest {info['digest']}); a checkpoint "
            f"does not choose which files are read: pass that file, weights=PATH (--weights PATH)"
        )
    return info["source"]
