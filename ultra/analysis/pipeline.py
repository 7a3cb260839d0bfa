"""The "what / where" analysis of a folder of images: spectral clustering over all layers' kq, vv and xx graphs.

For each graph kind, the gradient-descent solver (:mod:`ultra.analysis.solver`) finds the leading
pseudo-eigenvectors of the layer-averaged graph of each image alone and of the whole folder at
once (intra- and inter-image edges). :func:`analyze` writes, per image, a sheet with the first three
non-trivial eigenvectors as RGB and k-means segments, and ``analysis.json`` with the figures of
:mod:`ultra.analysis.whatwhere` (position R^2, class R^2, k-means mIoU) per kind and level.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..backbone.image_size import DEFAULT_SIZE, check_size
from ..backbone.names import DEFAULT_BACKBONE
from ..backbone.vit import FrozenViT
from ..data import EvalTransform, ImageFolder
from ..data.grids import labels_to_grid
from ..errors import ConfigError, DataError
from ..files import atomic_path, refuse_collisions
from ..graphs.knn import GRAPH_KINDS, GraphSpec, KnnConfig, affinity_graphs, token_kinds
from ..pictures import eigen_rgb, overlay, save_sheet
from ..readout.kmeans import assign, kmeans
from .solver import SolverConfig, solve
from .whatwhere import kmeans_scores, level_r2

log = logging.getLogger(__name__)
LEVELS = ("image", "dataset")


def prepare_output(output: Path, overwrite: bool) -> Path:
    """Create ``output``; refuse a non-empty existing folder unless ``overwrite``."""
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {output} is not empty; pass --overwrite to write into it")
    output.mkdir(parents=True, exist_ok=True)
    return output


def check_image_sizes(data: ImageFolder, patch: int) -> None:
    for sample in data.samples:
        with Image.open(sample.image) as img:
            width, height = img.size
        if width < patch or height < patch:
            raise DataError(f"image {sample.image} is {width}x{height} px, smaller than one {patch}x{patch} patch")


ANALYSIS_KNN = KnnConfig(k_intra=16, k_inter=16, k_any=0, candidate_images=None)
"""The analysis's graphs: neighbours inside each image and in the other images (each level's structure apart)."""


def analyze(
    images: Path,
    output: Path,
    backbone: str = DEFAULT_BACKBONE,
    weights: str = "auto",
    precision: str = "auto",
    layers: list[int] | None = None,
    graph_kinds: list[str] = ("kq", "vv", "xx"),
    size: int = DEFAULT_SIZE,
    classes: int | None = None,
    knn: KnnConfig = ANALYSIS_KNN,
    teleport: float = 0.0,
    solver: SolverConfig = SolverConfig(),
    clusters: int = 8,
    overwrite: bool = False,
) -> dict:
    """Run the analysis and write its pictures and ``analysis.json`` into ``output``; returns the figures.

    Args:
        images: a folder of images (``images/`` and optional ``labels/``, or a flat folder).
        output: where to write; must be empty unless ``overwrite``.
        backbone: the frozen ViT (a timm name or alias).
        weights: its weights: auto, hub, offline, random or a file.
        precision: its arithmetic: auto (bfloat16 where the hardware runs it natively, else float32), bf16 or fp32.
        layers: blocks whose graphs are used (default: all).
        graph_kinds: among kq, vv, xx, nn (the pair of token kinds a graph compares); one solve per kind over all
            chosen layers.
        size: images are resized (shorter side) and centre-cropped to this square size (pixels).
        classes: number of label classes when labels/ exists (enables class R^2 and mIoU).
        knn: the graphs' neighbours (the per-image level uses only ``k_intra`` and ``k_any``).
        teleport: uniform teleport term keeping the graphs connected.
        solver: the gradient-descent solver (its seed also seeds k-means; ``batch_images``: images per
            step at the dataset level, default all at once).
        clusters: k-means segments per image and per set when there are no labels.
        overwrite: write into a non-empty output folder.
    """
    start = time.perf_counter()
    _check_settings(size, graph_kinds, solver, clusters, teleport)
    data, output = _open_folder(images, output, classes, size, overwrite)
    vit = FrozenViT(backbone, weights=weights, layers=layers, precision=precision)
    if size % vit.patch_size:
        raise ConfigError(f"--size {size} is not a multiple of the patch size {vit.patch_size} of {backbone}")
    check_image_sizes(data, vit.patch_size)
    items = [data[i] for i in range(len(data))]
    grids = _token_grids(vit, items, graph_kinds, solver)
    grid = tuple(next(iter(grids.values())).shape[1:3])
    labels = torch.stack([it["label"] for it in items]) if data.has_labels else None
    knn = replace(knn, k_inter=0) if len(items) == 1 else knn
    figures, maps = solve_kinds(
        grids, vit.layers, graph_kinds, knn, teleport, solver, labels, data.num_classes, clusters
    )
    settings = dict(images=str(images), model=vit.describe(), layers=list(vit.layers), graph_kinds=list(graph_kinds))
    settings |= dict(image_size=size, grid=list(grid), knn=asdict(knn), teleport=teleport, solver=asdict(solver))
    figures = {"settings": settings, **figures}
    _write_sheets(output, data, items, maps, graph_kinds, grid, labels)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    with atomic_path(output / "analysis.json") as tmp:
        tmp.write_text(json.dumps(figures, indent=2))
    print(format_table(figures, graph_kinds))
    return figures


def _open_folder(images: Path, output: Path, classes: int | None, size: int, overwrite: bool):
    """The folder's images (and labels when ``classes``) at the analysis size, and the output folder, checked: no
    output may be an input, and a non-empty output folder needs ``overwrite``."""
    data = ImageFolder(images, classes=classes, use_labels=classes is not None, transform=EvalTransform(size, size))
    refuse_collisions(
        {s.image: [Path(output) / f"{s.name}.png"] for s in data.samples},
        [s.label for s in data.samples if s.label is not None],
    )
    return data, prepare_output(output, overwrite)


def solve_kinds(
    grids: dict,
    layers,
    graph_kinds,
    knn: KnnConfig,
    teleport: float,
    solver: SolverConfig,
    labels,
    num_classes: int,
    clusters: int,
) -> tuple[dict, dict]:
    """For each graph kind and level (``image``, ``dataset``): the figures and ``(eigenvectors, k-means segments)``."""
    grid = tuple(next(iter(grids.values())).shape[1:3])
    figures, maps = {}, {}
    for kind in graph_kinds:
        levels = solve_levels(grids, [GraphSpec(kind, layer) for layer in layers], knn, teleport, solver)
        figures[kind] = {}
        for level, vectors in levels.items():
            stats, segments = _level_figures(vectors, grid, labels, num_classes, clusters, solver.seed, level)
            figures[kind][level] = stats
            maps[(kind, level)] = (vectors, segments)
    return figures, maps


def _token_grids(vit: FrozenViT, items: list[dict], graph_kinds, solver: SolverConfig) -> dict:
    """Every image's token grids of the kinds the graphs compare, at every layer; refuses more eigenvectors than an
    image has tokens."""
    kinds = token_kinds([GraphSpec(k, 0) for k in graph_kinds])
    keys = [(k, layer) for k in sorted(kinds) for layer in vit.layers]
    grids = vit.collect_grids((it["image"][None] for it in items), keys, progress=True)
    h, w = next(iter(grids.values())).shape[1:3]
    if solver.num_vectors >= h * w:
        raise ConfigError(
            f"--solver.num_vectors {solver.num_vectors} must be smaller than the {h * w} tokens of an image"
        )
    return grids


def _check_settings(size: int, graph_kinds, solver: SolverConfig, clusters: int, teleport: float) -> None:
    check_size(size)
    for name, value in (
        ("solver.num_vectors", solver.num_vectors),
        ("solver.epochs", solver.epochs),
        ("clusters", clusters),
        ("solver.batch_images", solver.batch_images or 1),
    ):
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if solver.lr <= 0 or teleport < 0:
        raise ConfigError(f"--solver.lr must be positive and --teleport >= 0, got {solver.lr} and {teleport}")
    for kind in graph_kinds:
        if kind not in GRAPH_KINDS:
            raise ConfigError(f"graph kind must be among {sorted(GRAPH_KINDS)}, got '{kind}'")


def solve_levels(
    grids: dict, specs: list[GraphSpec], knn: KnnConfig, teleport: float, solver: SolverConfig
) -> dict[str, torch.Tensor]:
    """Eigenvectors ``[images, tokens, m]`` of every image alone (``image``) and of the whole set at once
    (``dataset``)."""
    count, h, w = next(iter(grids.values())).shape[:3]
    per_image = []
    for b in tqdm(range(count), desc=f"{specs[0].kind}: per-image solves"):
        one = {key: value[b : b + 1].float() for key, value in grids.items()}
        graphs = affinity_graphs(one, specs, replace(knn, k_inter=0), teleport)
        per_image.append(solve(graphs, None, replace(solver, batch_images=None)).vectors)
    graphs = affinity_graphs({k: v.float() for k, v in grids.items()}, specs, knn, teleport)
    whole = solve(graphs, None, solver, nodes_per_image=h * w, progress=True).vectors
    return {"image": torch.stack(per_image), "dataset": whole.reshape(count, h * w, -1)}


def _level_figures(vectors, grid, labels, num_classes, clusters, seed, level) -> tuple[dict, torch.Tensor]:
    """Position/class R^2 (mean over the non-trivial eigenvectors) and k-means scores, per image or for the set."""
    grid_labels = labels_to_grid(labels, grid, num_classes) if labels is not None else None
    stats = level_r2(vectors, grid, grid_labels, num_classes, per_image=level == "image")
    informative = vectors[..., 1:]  # the leading eigenvector is sqrt(degree): no grouping information
    groups = [slice(i, i + 1) for i in range(len(vectors))] if level == "image" else [slice(None)]
    scores, segments = [], []
    for part in groups:
        v = informative[part]
        if labels is None:
            rows = v.reshape(-1, v.shape[-1])
            segments.append(assign(rows, kmeans(rows, clusters, seed=seed).centroids)[0].reshape(-1, *grid))
            continue
        present = int((labels[part].unique() != 255).sum())
        score, segment = kmeans_scores(v, labels[part], grid, num_classes, max(present, 2), seed)
        scores.append(score)
        segments.append(segment)
    if labels is not None:
        stats.update(
            miou=float(np.mean([x["miou"] for x in scores])),
            acc=float(np.mean([x["acc"] for x in scores])),
        )
    return stats, torch.cat(segments)


def _write_sheets(output, data, items, maps, graph_kinds, grid, labels) -> None:
    names = [sample.name for sample in data.samples]
    pictures = [(it["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for it in items]
    size = pictures[0].shape[1::-1]
    for b, name in enumerate(tqdm(names, desc="pictures")):
        panels, titles = [], []
        for kind in graph_kinds:
            row, row_titles = [pictures[b]], ["image"]
            for level in LEVELS:
                vectors, segments = maps[(kind, level)]
                eig = vectors[b][:, 1:4].reshape(*grid, 3).numpy()
                row += [eigen_rgb(eig, size), overlay(pictures[b], segments[b].numpy().astype(np.uint8))]
                row_titles += [f"{kind} {level}: eigvecs 1-3", f"{kind} {level}: k-means"]
            if labels is not None:
                row.append(overlay(pictures[b], labels[b].numpy()))
                row_titles.append("ground truth")
            panels.append(row)
            titles.append(row_titles)
        save_sheet(panels, titles, output / f"{name}.png", row_labels=list(graph_kinds))


def format_table(figures: dict, graph_kinds) -> str:
    """The figures as a plain-text table (kind x level)."""
    cols = ["position_r2", "class_r2", "miou", "acc"]
    lines = [f"{'graph':<6} {'level':<8} " + " ".join(f"{c:>11}" for c in cols)]
    for kind in graph_kinds:
        for level in LEVELS:
            stats = figures[kind][level]
            cells = [f"{stats[c]:>11.3f}" if c in stats else f"{'-':>11}" for c in cols]
            lines.append(f"{kind:<6} {level:<8} " + " ".join(cells))
    return "\n".join(lines)
