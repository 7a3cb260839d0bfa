"""A memory-mapped cache of frozen-backbone tokens: computed once per image and view, read for every epoch.

A cache folder holds, for every view of every image (views are the crops of a view transform),
one ``.npy`` array ``[views, h, w, D]`` (float16) per token kind and layer, the views' geometry,
their image index and their label grids (majority class per token, 255 where unlabelled).
Its name is ``<source>-<tokens>``: a hash of everything else that determines its content
(backbone and weights, view transform, and the data set's files: paths, sizes, modification
times) and a hash of the tokens it holds. A run that needs some tokens uses any complete cache of
the same source that holds them all (so one cache built with more tokens serves many runs). A
build writes into ``<name>.partial`` and resumes there after an interruption; the folder is
renamed to ``<name>`` only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..errors import CacheError
from ..files import (
    atomic_path,
    build_lock,
    cache_root,
    disk_full_named,
    remove_stale_parts,
    reserve_space,
    try_lock,
)
from .grids import labels_to_grid

if TYPE_CHECKING:  # annotations only: reading a cache needs no backbone
    from ..backbone.vit import FrozenViT
    from .base import SegmentationDataset

log = logging.getLogger(__name__)

TokenKey = tuple[str, int]


@dataclass(frozen=True)
class CacheConfig:
    """The feature cache.

    Args:
        dir: where feature caches live (default: ``features/`` in the user cache, ``$ULTRA_CACHE_DIR`` or
        ``~/.cache/ultra``).
        batch_size: images per backbone batch while caching.
    """

    dir: str | None = None
    batch_size: int = 8

    def folder(self) -> Path:
        """Where the feature caches live."""
        return Path(self.dir) if self.dir else cache_root() / "features"


def _key_name(key: TokenKey) -> str:
    return f"{key[0]}{key[1]}"


def collate_views(items: list[dict]) -> dict:
    """Batch items of a view transform: images ``[b, V, 3, s, s]``, labels, geometry, indices."""
    return {
        "image": torch.stack([it["image"] for it in items]),  # [b, V, 3, s, s]
        "label": torch.stack([it["label"] for it in items]),  # [b, V, s, s]
        "geometry": torch.stack([it["geometry"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }


def _array_specs(meta: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """File name -> (shape, dtype) of every array of a cache described by ``meta``."""
    views, grid = meta["num_images"] * meta["views_per_image"], tuple(meta["grid"])
    specs = {f"{name}.npy": ((views, *grid, dim), np.dtype(np.float16)) for name, dim in meta["dims"].items()}
    specs["labels.npy"] = ((views, *grid), np.dtype(np.uint8))
    specs["geometry.npy"] = ((views, 5), np.dtype(np.float32))
    return specs


def check_arrays(folder: Path, meta: dict) -> str | None:
    """The first problem with the arrays of a cache folder (missing, truncated, other shape or type), or None."""
    for name, (shape, dtype) in _array_specs(meta).items():
        path = folder / name
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                found_shape, _, found_dtype = read_header(f)
                data_start = f.tell()
        except (OSError, ValueError) as err:
            return f"{path}: {err}"
        if tuple(found_shape) != shape or found_dtype != dtype:
            return f"{path} holds {found_dtype} {tuple(found_shape)}, the manifest says {dtype} {shape}"
        size, expected = path.stat().st_size, data_start + int(np.prod(shape)) * dtype.itemsize
        if size != expected:
            return f"{path} is {size} bytes, {expected} expected (truncated or damaged)"
    return None


class FeatureCache:
    """Read access to a complete cache folder (its arrays are checked against its manifest when opened)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a complete feature cache (no meta.json)")
        try:
            self.meta = json.loads(meta_file.read_text())
            problem = check_arrays(self.path, self.meta)
        except (ValueError, KeyError, TypeError) as err:
            raise CacheError(f"feature cache manifest {meta_file} is damaged: {err}") from None
        if problem:
            raise CacheError(f"feature cache file {problem}")
        self.keys: list[TokenKey] = [tuple(k) for k in self.meta["tokens"]]
        self.grid: tuple[int, int] = tuple(self.meta["grid"])
        self.views_per_image: int = self.meta["views_per_image"]
        self.num_images: int = self.meta["num_images"]
        self._arrays = {key: np.load(self.path / f"{_key_name(key)}.npy", mmap_mode="c") for key in self.keys}
        self.geometry = torch.from_numpy(np.load(self.path / "geometry.npy"))
        self.labels = np.load(self.path / "labels.npy", mmap_mode="r")

    @property
    def num_views(self) -> int:
        return self.num_images * self.views_per_image

    @property
    def tokens_per_view(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_nodes(self) -> int:
        return self.num_views * self.tokens_per_view

    def dim(self, keys: Sequence[TokenKey]) -> int:
        return sum(self._arrays[tuple(k)].shape[-1] for k in keys)

    def tensor(self, key: TokenKey) -> Tensor:
        """``[views, h*w, D]`` float16 tensor backed by the memory map (no copy)."""
        array = self._arrays[tuple(key)]
        return torch.from_numpy(array).reshape(array.shape[0], -1, array.shape[-1])

    def rows(self, keys: Sequence[TokenKey], nodes: Tensor) -> Tensor:
        """Float32 tokens ``[len(nodes), sum D]`` of the given nodes (view * h*w + token), keys concatenated."""
        order = nodes.cpu().numpy()
        parts = [self._arrays[tuple(k)].reshape(-1, self._arrays[tuple(k)].shape[-1])[order] for k in keys]
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)).float()

    def node_labels(self, nodes: Tensor) -> Tensor:
        return torch.from_numpy(self.labels.reshape(-1)[nodes.cpu().numpy()].astype(np.int64))

    def view_image(self) -> Tensor:
        """The image index of every view."""
        return torch.arange(self.num_images).repeat_interleave(self.views_per_image)

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def open_or_build(
        cls,
        dataset: SegmentationDataset,
        backbone: FrozenViT,
        keys: Sequence[TokenKey],
        views,
        root: str | Path,
        batch_size: int = 8,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> FeatureCache:
        """The cache of ``dataset`` seen through ``views`` (a view transform), built first if needed."""
        keys = sorted({(k, int(layer) % backbone.num_layers) for k, layer in keys})
        source = {
            "backbone": backbone.describe(device),
            "views": _describe(views),
            "dataset": dataset.fingerprint(),
            "num_classes": dataset.num_classes,
        }
        prefix = _digest(source, 16)
        found = cls._find(
            Path(root), prefix, keys, repair=False
        )  # a complete cache is read without a lock (or a write)
        if found is not None:
            return found
        Path(root).mkdir(parents=True, exist_ok=True)
        with build_lock(Path(root) / prefix, "the feature cache"):  # concurrent runs build it once
            found = cls._find(Path(root), prefix, keys, repair=True)
            if found is not None:
                return found
            final = Path(root) / f"{prefix}-{_digest(keys, 8)}"
            dataset.check(headers_only=True)  # a bad file is named now, not after hours of building
            # the same images, backbone and views: a partial build of an older version of them is replaced by this one
            lineage = _digest({**source, "dataset": [type(dataset).__name__, [s.name for s in dataset.samples]]}, 16)
            _remove_replaced_partials(Path(root), lineage, keep=final)
            _build(
                final,
                {**source, "tokens": keys, "lineage": lineage},
                dataset.with_transform(views),
                backbone,
                keys,
                batch_size,
                num_workers,
                device,
                progress,
            )
            return cls(final)

    @classmethod
    def _find(cls, root: Path, prefix: str, keys: list[TokenKey], repair: bool) -> FeatureCache | None:
        """A complete cache of ``prefix`` holding ``keys``; with ``repair`` (under the build lock) a damaged one is
        removed."""
        for folder in sorted(root.glob(f"{prefix}-*")):
            if not folder.name.endswith((".partial", ".lock")) and (folder / "meta.json").is_file():
                try:
                    cache = cls(folder)
                except CacheError as err:
                    if not repair:
                        continue
                    log.warning("%s; rebuilding the cache %s", err, folder)
                    shutil.rmtree(folder)
                    continue
                if set(keys) <= set(cache.keys):
                    log.info("feature cache %s found", folder)
                    return cache
        return None


def _remove_replaced_partials(root: Path, lineage: str, keep: Path) -> None:
    """Remove the unfinished builds of the same lineage as ``keep`` under other names (their data set's files have
    changed since, e.g. a bad image was fixed), unless another process is building them now."""
    for partial in root.glob("*.partial"):
        if partial.name == f"{keep.name}.partial":
            continue
        try:
            same = json.loads((partial / "build.json").read_text()).get("lineage") == lineage
        except (OSError, ValueError):
            continue
        if not same:
            continue
        lock = try_lock(root / f"{partial.name.split('-')[0]}.lock")
        if lock is None:  # another process is building it now
            continue
        try:
            log.info("removing %s: an unfinished cache of an older version of these images", partial)
            shutil.rmtree(partial, ignore_errors=True)
        finally:
            lock.release()


def _digest(value, length: int) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def _describe(transform) -> dict:
    return {"class": type(transform).__name__, **{k: repr(v) for k, v in sorted(vars(transform).items())}}


def _build(
    final: Path,
    spec: dict,
    dataset: SegmentationDataset,
    backbone: FrozenViT,
    keys: list[TokenKey],
    batch_size: int,
    num_workers: int,
    device,
    progress: bool,
) -> None:
    """Build the cache in ``<final>.partial`` (resuming an interrupted build of the same shape), then rename it."""
    partial = final.with_name(final.name + ".partial")
    shape_meta = _shape_meta(spec, dataset, backbone, keys)
    remove_stale_parts(partial)  # under the build lock: a killed write of the progress record
    done = _resume_point(partial, shape_meta)
    if not done:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        (partial / "build.json").write_text(json.dumps(shape_meta, sort_keys=True))
    arrays = _open_arrays(partial, shape_meta, keys, len(dataset), "r+" if done else "w+")
    views, grid = shape_meta["views_per_image"], tuple(shape_meta["grid"])
    backbone = backbone.to(device)
    loader = DataLoader(
        Subset(dataset, range(done, len(dataset))),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_views,
    )
    bar = tqdm(total=len(dataset), initial=done, desc="feature cache", disable=not progress)
    for batch in loader:
        images = batch["image"].flatten(0, 1).to(device)
        start = int(batch["index"][0]) * views
        stop = start + images.shape[0]
        feats = backbone(images, layers=sorted({layer for _, layer in keys}), kinds=sorted({k for k, _ in keys}))
        for key in keys:
            arrays[_key_name(key)][start:stop] = feats[key].half().cpu().numpy()
        arrays["labels"][start:stop] = labels_to_grid(batch["label"].flatten(0, 1), grid, spec["num_classes"]).numpy()
        arrays["geometry"][start:stop] = batch["geometry"].flatten(0, 1).numpy()
        for array in arrays.values():
            array.flush()
        with atomic_path(partial / "progress.json") as tmp:
            tmp.write_text(json.dumps({"done_images": stop // views}))
        bar.update(len(batch["index"]))
    bar.close()
    del arrays
    (partial / "progress.json").unlink()
    (partial / "build.json").unlink()
    with atomic_path(partial / "meta.json") as tmp:
        tmp.write_text(json.dumps(shape_meta, indent=1, sort_keys=True))
    os.replace(partial, final)
    log.info("feature cache written to %s", final)


def _shape_meta(spec: dict, dataset: SegmentationDataset, backbone: FrozenViT, keys: list[TokenKey]) -> dict:
    """The cache's manifest: its source ``spec`` and the shape of its arrays (from the first image's views)."""
    first = dataset[0]
    if first["image"].ndim != 4:
        raise ValueError(
            "the cache needs a view transform (views x 3 x H x W images), e.g. FiveCropViews or CenterView"
        )
    views, size = first["image"].shape[0], tuple(first["image"].shape[-2:])
    backbone.check_images(first["image"][:1])
    return {
        **spec,
        "grid": [size[0] // backbone.patch_size, size[1] // backbone.patch_size],
        "views_per_image": views,
        "num_images": len(dataset),
        "dims": {_key_name(k): backbone.embed_dim for k in keys},
    }


def _open_arrays(partial: Path, shape_meta: dict, keys: list[TokenKey], num_images: int, mode: str) -> dict:
    """The memory-mapped arrays of a build (token keys by name, ``labels``, ``geometry``), their space reserved."""
    total_views, grid = num_images * shape_meta["views_per_image"], tuple(shape_meta["grid"])
    shapes = {_key_name(k): (np.float16, (total_views, *grid, shape_meta["dims"][_key_name(k)])) for k in keys}
    shapes |= {"labels": (np.uint8, (total_views, *grid)), "geometry": (np.float32, (total_views, 5))}
    with disk_full_named(partial, f"reserving the feature cache of {num_images} images"):
        arrays = {
            name: np.lib.format.open_memmap(partial / f"{name}.npy", mode=mode, dtype=dtype, shape=shape)
            for name, (dtype, shape) in shapes.items()
        }
        for name in arrays:
            reserve_space(partial / f"{name}.npy")
    return arrays


def _resume_point(partial: Path, shape_meta: dict) -> int:
    """Images already cached by an interrupted build of the same spec (0 when starting afresh)."""
    try:
        same = json.loads((partial / "build.json").read_text()) == json.loads(json.dumps(shape_meta, sort_keys=True))
        done = json.loads((partial / "progress.json").read_text())["done_images"] if same else 0
    except (OSError, ValueError, KeyError):
        return 0
    problem = check_arrays(partial, shape_meta) if done else None
    if problem:
        log.warning("the interrupted feature cache %s is damaged (%s): starting it again", partial, problem)
        return 0
    if done:
        log.info("resuming feature cache %s after %d images", partial, done)
    return done
