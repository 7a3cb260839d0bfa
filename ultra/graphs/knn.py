"""Per-layer affinity graphs from a frozen ViT's token grids: cosine kNN inside each image and across images.

Graph kinds are named by the token kinds they compare (:data:`~ultra.backbone.vit.KINDS`): ``kq`` (the
queries of i with the keys of j: "where" attention would look), ``vv`` (values with values: "what"),
``xx`` (block outputs with block outputs) and ``nn`` (block outputs through the final LayerNorm). The
older names ``feat`` and ``norm`` are read as ``xx`` and ``nn``.

For a set of B images with n tokens each (N = B*n nodes), every token keeps its ``k_intra`` most
similar tokens of its own image (itself excluded), its ``k_inter`` most similar tokens of the
other images, and its ``k_any`` most similar tokens of the whole set wherever they are (a plain
kNN graph; inter-image neighbours appear where they are closer than the image's own tokens).
"Other images" are all of them, or only the image's ``candidate_images`` nearest images by mean
token. Similarities below ``threshold`` are dropped, and the edges are symmetrised and normalised
(:class:`~ultra.graphs.sparse.SparseGraph`). Work is blockwise: the largest similarity block held is
``n x max(k, max_block // n)`` floats (``max_block`` = 2^24 by default, 64 MB in float32), never
``N x N``; memory of the result is O(N * (k_intra + k_inter + k_any)) before symmetrising (at most twice that
after).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.standardise import SPACES
from ..errors import ConfigError
from . import sparse as graph_module
from .sparse import SparseGraph, index_dtype, lift_graph, pooling_matrix

GRAPH_KINDS = {"kq": ("q", "k"), "vv": ("v", "v"), "xx": ("x", "x"), "nn": ("n", "n")}
"""Graph kind -> (token kind of the rows, token kind of the columns)."""


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the spectral loss: its kind (the token kinds it compares, e.g. ``kq``), the backbone layer it comes
    from and its weight."""

    kind: str
    layer: int
    weight: float = 1.0

    def __post_init__(self):
        if self.kind not in GRAPH_KINDS:
            raise ConfigError(f"graph kind must be one of {sorted(GRAPH_KINDS)}, got '{self.kind}'")
        if self.weight <= 0:
            raise ConfigError(f"graph weight must be positive, got {self.weight}")

    @property
    def name(self) -> str:
        return f"{self.kind}{self.layer}"

    @property
    def token_keys(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """The ``(token kind, layer)`` keys of the row and the column tokens (q and k for ``kq``)."""
        row_kind, col_kind = GRAPH_KINDS[self.kind]
        return (row_kind, self.layer), (col_kind, self.layer)


@dataclass(frozen=True, kw_only=True)
class KnnConfig:
    """Neighbour counts, threshold, candidate images and block size of a kNN graph.

    The defaults are the graph the head is trained on: 16 neighbours anywhere in the set (other
    images where they are the closest), searched among each image's 32 nearest images.

    Args:
        k_intra: neighbours of each token inside its own image.
        k_inter: neighbours of each token in the other images.
        k_any: neighbours of each token anywhere in the set.
        threshold: affinities below it are dropped.
        candidate_images: search the other images' tokens only in each image's nearest images (by mean
            token); None searches them all.
        group_views: for a cache of several views (crops) per image, the other views of the same image
            are not "other images": the inter-image and anywhere searches and the candidate images skip
            them (the view operator already ties them together), leaving the slots to other images.
        max_block: the largest similarity block held at once (entries).
        space: the token space of the search: ``raw`` (cosine of the tokens), ``centred`` (of the tokens
            minus their mean over the set) or ``whitened`` (of the PCA-whitened tokens); the affinities
            are cosines in that space.
    """

    k_intra: int = 0
    k_inter: int = 0
    k_any: int = 16
    threshold: float = 0.0
    candidate_images: int | None = 32
    group_views: bool = False
    max_block: int = 1 << 24
    space: str = "raw"

    def __post_init__(self):
        counts = (self.k_intra, self.k_inter, self.k_any)
        if min(counts) < 0 or sum(counts) == 0:
            raise ConfigError(f"k_intra, k_inter and k_any must be >= 0 and not all 0, got {counts}")
        if self.threshold < 0:
            raise ConfigError(f"threshold must be >= 0 (affinities must be non-negative), got {self.threshold}")
        if self.space not in SPACES:
            raise ConfigError(f"knn.space must be one of {SPACES}, got '{self.space}'")
        if self.candidate_images is not None and self.candidate_images < 1:
            raise ConfigError(f"candidate_images must be >= 1 or None, got {self.candidate_images}")

    def check_counts(self, tokens_per_view: int, prefix: str = "data.knn") -> None:
        """Refuse, before any work, neighbour counts that a view's tokens and its candidate images cannot supply."""
        if self.k_intra > tokens_per_view - 1:
            raise ConfigError(
                f"{prefix}.k_intra={self.k_intra} exceeds the {tokens_per_view - 1} other tokens of a view"
            )
        if self.candidate_images is not None:
            searched = (self.candidate_images + 1) * tokens_per_view - 1
            if self.k_any > searched or self.k_inter > self.candidate_images * tokens_per_view:
                raise ConfigError(
                    f"{prefix}.k_any={self.k_any} / k_inter={self.k_inter} exceed the tokens searched: a "
                    f"view's {tokens_per_view} and those of its {self.candidate_images} candidate images; "
                    f"raise {prefix}.candidate_images or lower the counts"
                )


def token_kinds(specs: Sequence[GraphSpec]) -> set[str]:
    """The backbone token kinds (x, q, k, v) needed by ``specs``."""
    return {kind for spec in specs for kind in GRAPH_KINDS[spec.kind]}


def knn_graph(
    rows: Tensor,
    cols: Tensor | None = None,
    config: KnnConfig = KnnConfig(),
    device: str | torch.device = "cpu",
    groups: Tensor | None = None,
    teleport: float = 0.0,
    on_view: Callable[[int], None] | None = None,
) -> SparseGraph:
    """The kNN graph of ``B`` images' tokens: ``rows``/``cols`` are ``[B, n, D]`` (``cols`` defaults to ``rows``).

    ``groups`` (``[B]``, used with ``config.group_views``): the source image of each of the B views.
    ``teleport``: the uniform term that keeps a free table's graph connected
    (:class:`~ultra.graphs.sparse.SparseGraph`). ``on_view(b)`` is called once view ``b``'s edges are in
    (progress bars, benchmarks).

    Similarity is the cosine of ``rows[i]`` with ``cols[j]``; node ``b*n + t`` is token t of image b.
    Tokens may be any dtype and stay where they are (e.g. float16 memory-mapped on the host): each
    block is moved to ``device`` and normalised in float32 there; the edges come back to the CPU.
    """
    if rows.ndim != 3:
        raise ValueError(f"token sets must be [images, tokens, dim], got {tuple(rows.shape)}")
    cols = rows if cols is None else cols
    if cols.shape != rows.shape:
        raise ValueError(f"row tokens {tuple(rows.shape)} and column tokens {tuple(cols.shape)} differ")
    num_images, n, _ = rows.shape
    k_inter, groups = _check_set(config, num_images, n, groups)
    candidates = _candidate_images(rows, config, k_inter, groups)
    total = num_images * n
    # the directed graph W in chunks of whole views (about ROW_CHUNK rows), each filled view by view into buffers
    # allocated once (at most k entries a row): small allocations kept across the loop would fragment the heap
    width = config.k_intra + k_inter + config.k_any
    views_per_chunk = max(1, graph_module.ROW_CHUNK // n)
    pieces = []
    for b, (src, dst, val) in enumerate(_knn_edges(rows, cols, config, k_inter, candidates, torch.device(device))):
        if b % views_per_chunk == 0:
            size = min(views_per_chunk, num_images - b) * n
            counts, targets, weights = (
                torch.zeros(size, dtype=torch.long),
                torch.empty(size * width, dtype=index_dtype(total)),
                torch.empty(size * width),
            )
            filled = 0
        keep = val >= config.threshold
        # an edge found by two searches (e.g. intra and any) is kept once; rows sorted by target
        pair, first = torch.unique((src[keep] - b * n) * total + dst[keep], return_inverse=True)
        targets[filled : filled + pair.numel()] = pair % total
        weights[filled : filled + pair.numel()] = torch.zeros(pair.numel()).scatter_(0, first, val[keep])
        local = (b % views_per_chunk) * n
        counts[local : local + n] = torch.bincount(pair // total, minlength=n)
        filled += pair.numel()
        if local + n == size:
            pieces.append((counts, targets[:filled], weights[:filled]))
        if on_view is not None:
            on_view(b)
    return SparseGraph.from_row_chunks(pieces, total, views_per_chunk * n, teleport)


def _check_set(config: KnnConfig, num_images: int, n: int, groups: Tensor | None) -> tuple[int, Tensor | None]:
    """Refuse neighbour counts that ``num_images`` images of ``n`` tokens cannot supply; returns the inter-image count
    (none for one image) and the views' source images when ``group_views`` is on."""
    if config.k_intra > n - 1:
        raise ConfigError(f"k_intra={config.k_intra} exceeds the {n - 1} other tokens of an image")
    k_inter = config.k_inter if num_images > 1 else 0
    if k_inter > (num_images - 1) * n:
        raise ConfigError(f"k_inter={k_inter} exceeds the {(num_images - 1) * n} tokens of the other images")
    if config.k_any > num_images * n - 1:
        raise ConfigError(f"k_any={config.k_any} exceeds the {num_images * n - 1} other tokens of the set")
    if config.group_views and (groups is None or groups.shape != (num_images,)):
        raise ConfigError(f"knn.group_views needs the source image of each of the {num_images} views")
    groups = groups if config.group_views else None
    if groups is not None and num_images - int(torch.bincount(groups).max()) < 1:
        raise ConfigError("knn.group_views: every view comes from the same image, there are no other images")
    return k_inter, groups


def _candidate_images(rows: Tensor, config: KnnConfig, k_inter: int, groups: Tensor | None) -> Tensor | None:
    """The images each image searches for neighbours (its nearest by mean token), or None when it searches them all."""
    num_images = rows.shape[0]
    others = num_images - 1 if groups is None else num_images - int(torch.bincount(groups).max())
    count = others if config.candidate_images is None else min(config.candidate_images, others)
    if not (k_inter or config.k_any) or (count >= num_images - 1 and groups is None):
        return None
    means = torch.stack([_unit(rows[b]).mean(0) for b in range(num_images)])
    return nearest_images(means, count, groups)


def _knn_edges(
    rows: Tensor, cols: Tensor, config: KnnConfig, k_inter: int, candidates: Tensor | None, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Directed edges (source, target, cosine) of every search, one image at a time (on the CPU)."""
    search = _Search(rows, cols, config, k_inter, candidates, device)
    for b in range(search.num_images):
        queries = _unit(search.rows[b].to(device))
        searches = [(config.k_intra, search.intra), (k_inter, search.inter), (config.k_any, search.anywhere)]
        found = [find(b, queries) for wanted, find in searches if wanted]
        yield tuple(torch.cat([edges[j].cpu() for edges in found]) for j in range(3))


class _Search:
    """The three neighbour searches of one image's tokens, sharing buffers allocated once for the whole set."""

    def __init__(
        self,
        rows: Tensor,
        cols: Tensor,
        config: KnnConfig,
        k_inter: int,
        candidates: Tensor | None,
        device: torch.device,
    ):
        self.num_images, self.n, _ = rows.shape
        if device.type == "cuda":  # one transfer of every token instead of one per search, when the GPU has room
            free, _ = torch.cuda.mem_get_info(device)
            needed = rows.numel() * rows.element_size() * (1 if cols is rows else 2)
            if needed < 0.8 * free:
                same = cols is rows
                rows = rows.to(device)
                cols = rows if same else cols.to(device)
        self.rows, self.cols, self.config, self.k_inter = rows, cols, config, k_inter
        self.candidates, self.device = candidates, device
        n = self.n
        self.all_cols = cols.reshape(self.num_images * n, -1)
        width = max(k_inter, config.k_any + 1, min(config.max_block // n, self.num_images * n))
        searches = bool(k_inter or config.k_any)
        self.buffer = torch.empty(n, width, device=device) if searches else None
        # the candidate views' tokens and their unit keys also go to buffers allocated once, not once per view
        key_rows = width if candidates is None else (candidates.shape[1] + 1) * n
        self.key_storage = torch.empty(key_rows * cols.shape[-1], device=device) if searches else None
        self.view_storage = (
            None if candidates is None else torch.empty(key_rows * cols.shape[-1], dtype=cols.dtype, device=cols.device)
        )

    def _top(self, queries: Tensor, keys: Tensor, k: int, exclude: tuple[int, int] | None = None):
        return topk_blockwise(
            queries, keys, k, self.config.max_block, exclude=exclude, buffer=self.buffer, key_storage=self.key_storage
        )

    def intra(self, b: int, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ``k_intra`` nearest tokens of the image's own."""
        n, k, offset = self.n, self.config.k_intra, b * self.n
        sim = queries @ _unit(self.cols[b].to(self.device)).T
        sim.fill_diagonal_(-float("inf"))
        v, i = sim.topk(k, dim=1)
        return torch.arange(n, device=self.device).repeat_interleave(k) + offset, i.flatten() + offset, v.flatten()

    def inter(self, b: int, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ``k_inter`` nearest tokens of the other images (of the candidate images, when they are limited)."""
        n, offset = self.n, b * self.n
        if self.candidates is None:
            v, i = self._top(queries, self.all_cols, self.k_inter, exclude=(offset, offset + n))
        else:
            images = self.candidates[b]
            v, i = self._top(queries, _gather_views(self.cols, images, self.view_storage), self.k_inter)
            i = images.to(self.device).repeat_interleave(n)[i] * n + i % n
        return torch.arange(n, device=self.device).repeat_interleave(v.shape[1]) + offset, i.flatten(), v.flatten()

    def anywhere(self, b: int, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ``k_any`` nearest tokens of the set (of the image and its candidate images, when they are limited)."""
        n, k = self.n, self.config.k_any
        keys, key_nodes = self.all_cols, None
        if self.candidates is not None:
            images = torch.cat([torch.tensor([b]), self.candidates[b]])
            keys = _gather_views(self.cols, images, self.view_storage)
            key_nodes = (images[:, None] * n + torch.arange(n)).flatten().to(self.device)
        v, i = self._top(queries, keys, k + 1)
        i = i if key_nodes is None else key_nodes[i]
        own = torch.arange(n, device=self.device)[:, None] + b * n
        # drop the token itself; keep the k_any best others of each row
        v, pick = v.masked_fill(i == own, -float("inf")).topk(k, dim=1)
        return own.expand(-1, k).flatten(), i.gather(1, pick).flatten(), v.flatten()


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def _unit_into(x: Tensor, storage: Tensor | None) -> Tensor:
    """``_unit(x)`` (the same float32 values), written into the flat ``storage`` when it has room."""
    if storage is None or storage.numel() < x.numel():
        return _unit(x)
    out = storage[: x.numel()].view(x.shape).copy_(x)
    return out.div_(out.norm(2, -1, keepdim=True).clamp_min(1e-12))


def _gather_views(tokens: Tensor, views: Tensor, storage: Tensor) -> Tensor:
    """The tokens of ``views`` (``tokens`` ``[B, n, D]``) as ``[len(views) * n, D]`` rows, copied into ``storage``."""
    n, dim = tokens.shape[1:]
    out = storage[: len(views) * n * dim].view(len(views), n, dim)
    return torch.index_select(tokens, 0, views.to(tokens.device), out=out).view(-1, dim)


def topk_blockwise(
    queries: Tensor,
    keys: Tensor,
    k: int,
    max_block: int = 1 << 24,
    exclude: tuple[int, int] | None = None,
    buffer: Tensor | None = None,
    key_storage: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` cosines of each (unit) query with ``keys`` (``[Nk, D]``, normalised block by block), scanning keys
    in blocks.

    ``exclude`` is a ``[start, stop)`` range of keys left out. Holds at most ``len(queries) x block``
    scores, in ``buffer`` when given, and normalises each key block into ``key_storage`` (flat float32) when given:
    both are reused across calls, since repeated large allocations fragment the heap.
    """
    block = max(k, max_block // max(1, queries.shape[0]))
    if buffer is None or buffer.numel() < queries.shape[0] * min(block, keys.shape[0]):
        buffer = torch.empty(queries.shape[0], min(block, keys.shape[0]), dtype=queries.dtype, device=queries.device)
    flat = buffer.view(-1)  # scores laid out contiguously, whatever the block's width (a strided block is slower)
    best_v = torch.full((queries.shape[0], 0), -float("inf"), device=queries.device)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, keys.shape[0], block):
        chunk = _unit_into(keys[start : start + block].to(queries.device), key_storage)
        sim = torch.matmul(
            queries, chunk.T, out=flat[: queries.shape[0] * chunk.shape[0]].view(queries.shape[0], chunk.shape[0])
        )
        if exclude is not None:
            lo, hi = max(exclude[0] - start, 0), min(exclude[1] - start, sim.shape[1])
            if lo < hi:
                sim[:, lo:hi] = -float("inf")
        v, i = sim.topk(min(k, sim.shape[1]), dim=1)
        best_v, pick = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + v.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, pick)
    return best_v, best_i


def nearest_images(image_features: Tensor, count: int, groups: Tensor | None = None) -> Tensor:
    """For each image, the ``count`` most similar other images (cosine of ``[B, D]`` image features);
    with ``groups``, images of the same group are not candidates."""
    feats = _unit(image_features)
    out = []
    for start in range(0, feats.shape[0], 1024):
        chunk = feats[start : start + 1024]
        sim = chunk @ feats.T
        sim[torch.arange(chunk.shape[0]), torch.arange(start, start + chunk.shape[0])] = -float("inf")
        if groups is not None:
            sim.masked_fill_(groups[start : start + chunk.shape[0], None] == groups[None, :], -float("inf"))
        out.append(sim.topk(count, dim=1).indices)
    return torch.cat(out)


def affinity_graphs(
    grids: Mapping[tuple[str, int], Tensor],
    specs: Sequence[GraphSpec],
    config: KnnConfig = KnnConfig(),
    teleport: float = 0.0,
) -> list[SparseGraph]:
    """One graph per spec from token grids ``grids[(token_kind, layer)] = [B, h, w, D]``.

    Layers whose grid is coarser than the finest one are lifted to it by an orthonormal pooling
    map, so every returned graph is an operator over the same nodes (the finest grid's tokens).
    """
    if not specs:
        raise ValueError("no graph specs given")
    sizes = {}
    for spec in specs:
        for key in spec.token_keys:
            if key not in grids:
                raise ConfigError(
                    f"graph {spec.name} needs '{key[0]}' tokens of layer {spec.layer}, which were not computed"
                )
            sizes[spec] = tuple(grids[key].shape[1:3])
    finest = max(sizes.values(), key=lambda s: s[0] * s[1])
    if teleport and any(size != finest for size in sizes.values()):
        raise ConfigError("teleport is not supported with graphs of different grid sizes")
    graphs = []
    for spec in specs:
        r, c = (grids[key] for key in spec.token_keys)
        graph = knn_graph(r.flatten(1, 2), c.flatten(1, 2), config, teleport=teleport)
        if sizes[spec] != finest:
            graph = lift_graph(graph, pooling_matrix(finest, sizes[spec], r.shape[0]))
        graphs.append(graph)
    return graphs
