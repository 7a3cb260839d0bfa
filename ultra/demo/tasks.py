"""What each tab of the demo computes, as plain functions of a photo file: no gradio here.

- :func:`segment_photo`: a checkpoint's label map, its overlay and legend (``Segmenter.segment``).
- Select is :func:`ultra.analysis.segments.select_object` on :func:`read_photo`'s picture.
- :func:`look_inside`: the first eigenvectors of one layer's kq, vv and xx graphs of the photo,
  and the relevance map of a clicked token.

Every user mistake (an unreadable or huge photo, a point outside it, a missing extra) raises a
:class:`~ultra.errors.UserError` whose message the page shows.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..analysis.points import point_token
from ..analysis.relevance import relevance_maps
from ..analysis.segments import prepare_image
from ..analysis.solver import exact_eigenvectors
from ..backbone.vit import FrozenViT
from ..data.io import image_size, read_image
from ..data.transforms import image_to_tensor
from ..errors import DataError
from ..graphs.knn import GraphSpec, KnnConfig, affinity_graphs, token_kinds
from ..pictures import eigen_rgb, heatmap, mark_point, overlay, palette
from ..readout.crf import require_crf
from ..readout.segmenter import Segmenter

Report = Callable[[float, str], None]
"""``report(fraction_done, what)``: progress of a task (the page shows it as a bar)."""

MAX_PIXELS = 25_000_000
"""The largest photo the demo takes (25 MP: a 6000x4000 photo is 24)."""
MIN_SIDE = 16
"""The shortest side of a photo the demo takes, in pixels (every tab: smaller is too small to show objects)."""
LOOK_GRAPHS = ("kq", "vv", "xx")
"""The graphs of the "Look inside" tab: where (key-query), what (value-value) and the block outputs."""
LOOK_KNN = KnnConfig(k_intra=16, k_inter=0, k_any=0, candidate_images=None)
"""The graphs of one photo alone: each token's 16 nearest tokens in it (as ``ultra-analyze``'s image level)."""


def _no_report(fraction: float, what: str) -> None:
    """Progress goes nowhere."""


def read_photo(path: str | Path) -> np.ndarray:
    """The photo as ``uint8 [H, W, 3]``, turned as its EXIF orientation says; too large or too small a photo is
    refused from its header, before its pixels are decoded (the same rule for every tab)."""
    if path is None:
        raise DataError("no photo: upload one or pick an example")
    width, height = image_size(path, "photo")
    if width * height > MAX_PIXELS:
        raise DataError(
            f"photo {Path(path).name} is {width}x{height} px ({width * height:,} pixels), more than the demo's "
            f"{MAX_PIXELS:,} ({MAX_PIXELS / 1e6:.0f} MP): downscale it first"
        )
    if min(width, height) < MIN_SIDE:
        raise DataError(
            f"photo {Path(path).name} is {width}x{height} px: the demo needs at least {MIN_SIDE} px on each side"
        )
    return read_image(path, orient=True)


MARKDOWN_SPECIALS = re.compile(r"([\\`*_~\[\]<>&])")
"""What can make a link, an image, emphasis, code or HTML inside one line of Markdown (the brackets of ``[text](url)``
and ``![alt](url)``, the angle brackets of tags and autolinks, entities); CommonMark shows each as itself after a
backslash."""


def escape_markdown(text: object) -> str:
    """``text`` shown as itself inside Markdown, on one line: no link, image, emphasis or HTML can come out of it (a
    checkpoint's class names and an error's file names are not the page's to format)."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(str(text).splitlines()))


# --- Segment --------------------------------------------------------------------------------------


@dataclass
class Segmentation:
    """A photo's label map ``[H, W]`` (class ids, or cluster ids without a matching; 255 unmatched), its overlay,
    the ``(id, name, colour, share of pixels)`` of each id present, and the seconds ``Segmenter.segment`` took."""

    labels: np.ndarray
    overlay: np.ndarray
    legend: list[tuple[int, str, tuple[int, int, int], float]]
    seconds: float


def label_names(segmenter: Segmenter, readout: str) -> list[str]:
    """The name of each id a readout's label map can hold: class names when its ids are classes, else clusters."""
    module = segmenter.readouts[readout]
    if module.outputs == "classes" or readout in segmenter.cluster_to_class:
        return list(segmenter.class_names)
    return [f"cluster {k}" for k in range(module.num_outputs)]


def segment_photo(
    segmenter: Segmenter, path: str | Path, readout: str = "head", crf: bool = False, flip: bool = False
) -> Segmentation:
    """Segment the photo at ``path`` with one of ``segmenter``'s readouts (optionally flip-averaged and CRF-refined)."""
    if crf:
        require_crf("the CRF option")
    picture = read_photo(path)
    start = time.perf_counter()
    labels = segmenter.segment(torch.from_numpy(picture).permute(2, 0, 1), readout=readout, crf=crf, flip=flip).numpy()
    seconds = time.perf_counter() - start
    names = label_names(segmenter, readout)
    colours = palette(len(names))
    counts = np.bincount(labels.ravel(), minlength=len(names))
    legend = [
        (
            int(i),
            names[i] if i < len(names) else "unmatched cluster",
            tuple(int(c) for c in colours[i]) if i < len(names) else (0, 0, 0),
            float(counts[i] / labels.size),
        )
        for i in np.argsort(-counts, kind="stable")
        if counts[i]
    ]
    return Segmentation(labels, overlay(picture, labels, num_colors=len(names)), legend, seconds)


def legend_html(legend: Sequence[tuple[int, str, tuple[int, int, int], float]]) -> str:
    """The legend as an HTML list: a colour swatch, the name and the share of pixels of each label."""
    rows = "".join(
        f'<li data-label="{i}"><span style="display:inline-block;width:1em;height:1em;margin-right:.4em;'
        f'vertical-align:middle;background:rgb{colour}"></span>{html.escape(name)} ({100 * share:.1f}%)</li>'
        for i, name, colour, share in legend
    )
    return f'<ul class="ultra-legend" style="list-style:none;padding-left:0">{rows}</ul>'


# --- Look inside ----------------------------------------------------------------------------------


@dataclass
class LayerView:
    """One layer of the backbone on one photo: the first three non-trivial eigenvectors of each graph as an RGB
    picture (``eigenvectors[kind]``), and the relevance map of the clicked token (None without a click)."""

    layer: int
    eigenvectors: dict[str, np.ndarray]
    relevance: np.ndarray | None


def look_inside(
    vit: FrozenViT,
    path: str | Path,
    layer: int = -1,
    point: tuple[float, float] | None = None,
    size: int = 448,
    report: Report = _no_report,
) -> LayerView:
    """The kq, vv and xx graphs of block ``layer`` on the photo at ``path``, by their exact leading eigenvectors
    (one photo's graph is small), and the relevance map of the token under ``point`` when given."""
    layer = vit.check_layers([layer])[0]
    picture = read_photo(path)
    height, width = picture.shape[:2]
    image = prepare_image(vit, image_to_tensor(picture), size)
    grid = vit.check_images(image[None])
    tokens = grid[0] * grid[1]
    if tokens < 5:
        raise DataError(
            f"photo {Path(path).name} gives only {grid[0]}x{grid[1]} tokens at --size {size}: too few for "
            f"graphs; use a larger size"
        )
    token = None if point is None else point_token(point, (height, width), grid)  # a point outside: refused now
    report(0.0, f"backbone, block {layer}")
    specs = [GraphSpec(kind, layer) for kind in LOOK_GRAPHS]
    features = vit(image[None], layers=[layer], kinds=sorted(token_kinds(specs)))
    grids = {key: features[key] for key in features.keys()}
    eigenvectors = {}
    for i, spec in enumerate(specs):
        report((i + 1) / (len(specs) + 2), f"{spec.kind} graph: eigenvectors")
        graph = affinity_graphs(grids, [spec], replace(LOOK_KNN, k_intra=min(LOOK_KNN.k_intra, tokens - 1)))
        vectors, _ = exact_eigenvectors(graph, None, 4)
        eigenvectors[spec.kind] = eigen_rgb(vectors[:, 1:4].reshape(*grid, 3).numpy(), (width, height))
    relevance = None
    if token is not None:
        report((len(specs) + 1) / (len(specs) + 2), "relevance map of the clicked token")
        values = relevance_maps(vit, image, layer=layer, targets=torch.tensor([token])).maps[0]
        relevance = mark_point(heatmap(values.numpy(), (width, height)), point)
    return LayerView(layer, eigenvectors, relevance)
