"""The training graphs over all cached tokens, built once and stored beside the cache.

The graphs of the spectral loss are built once over every cached token of the training set
(blockwise, sparse; see :mod:`ultra.graphs.knn`), the view-correspondence operator from the
cached view geometry (:mod:`ultra.graphs.correspondence`); both are saved as safetensors files
named by their settings, and memory-mapped by every process that trains on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from torch import Tensor
from tqdm.auto import tqdm

from ..data.cache import FeatureCache, TokenKey
from ..data.standardise import token_map
from ..errors import CacheError, ConfigError, DataError
from ..files import atomic_path, build_lock, remove_stale_parts
from .correspondence import image_correspondences
from .knn import GraphSpec, KnnConfig, knn_graph
from .sparse import SparseGraph, SparseRows, index_dtype, indptr_from_counts

log = logging.getLogger(__name__)


@dataclass
class TrainingGraphs:
    """The graphs of the loss (with their weights) and the optional view-correspondence operator: what head training
    reads."""

    graphs: list[SparseGraph]
    weights: list[float]
    view: SparseRows | None


def build_view_operator(
    geometry: Tensor,
    views_per_image: int,
    grid: tuple[int, int],
    chunk_images: int = 128,
    on_chunk: Callable[[int], None] | None = None,
) -> SparseRows:
    """Correspondences between the views of each image, over all cached nodes, ``chunk_images`` images at a time
    (each chunk's entries come in CSR order, its rows contiguous nodes: the operator is their concatenation).
    ``on_chunk(first)`` is called once the chunk starting at view ``first`` is done."""
    tokens = grid[0] * grid[1]
    num_nodes = geometry.shape[0] * tokens
    counts, indices, values = [], [], []
    for first in range(0, geometry.shape[0], chunk_images * views_per_image):
        chunk = geometry[first : first + chunk_images * views_per_image]
        r, c, v = image_correspondences(chunk.reshape(-1, views_per_image, 5), grid)
        counts.append(torch.bincount(r, minlength=chunk.shape[0] * tokens))
        indices.append((c + first * tokens).to(index_dtype(num_nodes)))
        values.append(v)
        if on_chunk is not None:
            on_chunk(first)
    return SparseRows(indptr_from_counts(torch.cat(counts)), torch.cat(indices), torch.cat(values))


def load_or_build_graphs(
    cache: FeatureCache,
    specs: Sequence[GraphSpec],
    knn: KnnConfig,
    view_consistency: bool,
    device: str | torch.device = "cpu",
    on_view: Callable[[int], None] | None = None,
) -> TrainingGraphs:
    """The training graphs of ``cache``, built once and stored in its ``graphs/`` folder (layers non-negative);
    ``on_view`` goes to :func:`~ultra.graphs.knn.knn_graph` when a graph is built."""
    folder = cache.path / "graphs"
    graphs = []
    for spec in specs:
        name = hashlib.sha256(json.dumps([spec.kind, spec.layer, asdict(knn)], sort_keys=True).encode()).hexdigest()[
            :16
        ]

        def build(spec=spec) -> SparseGraph:
            missing = [key for key in spec.token_keys if key not in cache.keys]
            if missing:
                raise ConfigError(f"graph {spec.name} needs the tokens {missing}, the cache holds {cache.keys}")
            log.info("building the %s graph of layer %d over %d tokens", spec.kind, spec.layer, cache.num_nodes)
            row_key, col_key = spec.token_keys
            columns = None if col_key == row_key else search_tokens(cache, col_key, knn.space)
            rows = search_tokens(cache, row_key, knn.space)
            with tqdm(total=rows.shape[0], desc=f"{spec.name} graph", unit="view") as bar:

                def progress(view: int) -> None:
                    bar.update()
                    if on_view is not None:
                        on_view(view)

                return knn_graph(rows, columns, knn, device=device, groups=cache.view_image(), on_view=progress)

        graph = _stored(
            folder / f"{spec.kind}{spec.layer}-{name}.safetensors",
            SparseGraph.load,
            build,
            cache.num_nodes,
            f"the {spec.name} graph",
        )
        if graph.nnz == 0:
            raise DataError(
                f"the {spec.name} graph of the training set has no edges over its {cache.num_nodes} tokens: its "
                f"tokens are all alike (e.g. images of one colour) or knn.threshold {knn.threshold} drops every "
                f"neighbour; train on varied images, or lower the threshold"
            )
        graphs.append(graph)
    view = None
    if view_consistency:
        view = _stored(
            folder / "views.safetensors",
            SparseRows.load,
            lambda: build_view_operator(cache.geometry, cache.views_per_image, cache.grid),
            cache.num_nodes,
            "the view operator",
        )
        if view.nnz == 0:
            log.warning("view consistency is on but no two views of an image overlap: the term is zero")
    return TrainingGraphs(graphs, [s.weight for s in specs], view)


def search_tokens(cache: FeatureCache, key: TokenKey, space: str, chunk: int = 1 << 16) -> Tensor:
    """The cached tokens of ``key`` in the token ``space`` of a graph search, ``[views, tokens, D]``: the cache's own
    memory map for ``raw``, else a float16 memory map beside the graphs, written once (atomically)."""
    tokens = cache.tensor(key)
    if space == "raw":
        return tokens
    path = cache.path / "graphs" / f"{space}-{key[0]}{key[1]}.npy"
    if not path.is_file():
        log.info("writing the %s tokens %s of %d nodes", space, key, cache.num_nodes)
        affine = token_map(cache, [key], space)
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(cache.num_nodes, tokens.shape[-1]))
            for start in range(0, cache.num_nodes, chunk):
                nodes = torch.arange(start, min(start + chunk, cache.num_nodes))
                with torch.no_grad():
                    out[start : start + len(nodes)] = affine(cache.rows([key], nodes)).numpy()
            out.flush()
            del out
    array = np.load(path, mmap_mode="c")  # copy-on-write, as the cache: a writable view, the file never written
    if array.shape != (cache.num_nodes, tokens.shape[-1]):
        raise CacheError(
            f"{path} holds {array.shape} tokens, {(cache.num_nodes, tokens.shape[-1])} expected: delete it"
        )
    return torch.from_numpy(array).reshape(tokens.shape)


def _stored(path: Path, load, build, num_nodes: int, what: str):
    """The operator stored at ``path``, read without a lock (or a write) when it is complete; else built once under
    the build lock (a damaged or stale file replaced) and stored."""
    operator = _load_checked(load, path, num_nodes, repair=False)
    if operator is not None:
        return operator
    path.parent.mkdir(exist_ok=True)
    with build_lock(path, what):
        remove_stale_parts(path.parent, path.name)
        operator = _load_checked(load, path, num_nodes, repair=True)
        if operator is None:
            build().save(path)
            operator = load(path)
    return operator


def _load_checked(load, path: Path, num_nodes: int, repair: bool):
    """A stored operator, or None when it is missing, damaged or of another size (then removed, with ``repair``)."""
    if not path.is_file():
        return None
    try:
        operator = load(path)
        if operator.num_nodes != num_nodes or operator.indptr[-1] != operator.nnz:
            raise ValueError(f"{operator.num_nodes} nodes and {operator.nnz} entries, {num_nodes} nodes expected")
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        if repair:
            log.warning("stored operator %s is damaged (%s): rebuilding it", path, err)
            path.unlink()
        return None
    return operator
