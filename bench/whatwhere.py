"""What / where, layer by layer, on real photos: position R^2 and class R^2 of each graph kind's eigenvectors.

For each set (camvid val, cocostuff-dev val, voc-mini), each block 0-11 and each graph kind (kq: queries
vs keys, "where"; vv: values, "what"; xx: block outputs), the leading eigenvectors of the layer's graph:

- image level: every image's own graph (neighbours inside the image), its exact eigenvectors (dense
  ``eigh`` of the 256-node operator; the gradient solver converges to them, and is 30x slower here);
- set level: the graph of the whole set (neighbours inside each image and in the other images), solved
  by the gradient-descent solver (:func:`ultra.analysis.solver.solve`) with 3 seeds: mean and std.

R^2 is averaged over the non-trivial eigenvectors (2-16), as in ``ultra-analyze``. Blocks 1, 3, ..., 11 by
default (``--layers``: every block costs 3 kinds x (a graph and 3 solves) per set; 15 minutes for the
default on 2 CPU cores). Writes
``figures.json`` and ``whatwhere.png`` (R^2 against layer, a line per kind, a panel per set) to
``--output``.

    python bench/whatwhere.py [--sets camvid,cocostuff,voc] [--size 224] [--seeds 0,1,2] [--output runs/whatwhere]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from realsets import open_set

KINDS = ("kq", "vv", "xx")


def measure_set(name: str, size: int, seeds: list[int], weights: str, layers: list[int] | None = None) -> dict:
    from ultra.analysis.pipeline import ANALYSIS_KNN
    from ultra.analysis.solver import SolverConfig, image_eigenvectors, solve
    from ultra.analysis.whatwhere import level_r2
    from ultra.backbone.vit import FrozenViT
    from ultra.data import EvalTransform
    from ultra.data.grids import labels_to_grid
    from ultra.graphs.knn import GraphSpec, affinity_graphs

    data = open_set(name, transform=EvalTransform(size, size))  # resized and centre-cropped
    vit = FrozenViT("vit_small_patch14_dinov2", weights=weights, layers=layers)
    items = [data[i] for i in range(len(data))]
    keys = [(k, layer) for k in "qkvx" for layer in vit.layers]
    grids = vit.collect_grids((it["image"][None] for it in items), keys, progress=True)
    count, h, w = next(iter(grids.values())).shape[:3]
    grid_labels = labels_to_grid(torch.stack([it["label"] for it in items]), (h, w), data.num_classes)
    solver = SolverConfig()
    figures = {"images": count, "grid": [h, w], "layers": {}}
    for layer in vit.layers:
        tokens = {key: value.float() for key, value in grids.items() if key[1] == layer}
        row = {}
        for kind in KINDS:
            spec = [GraphSpec(kind, layer)]
            intra = affinity_graphs(tokens, spec, replace(ANALYSIS_KNN, k_inter=0))[0]
            image = level_r2(
                image_eigenvectors(intra, h * w, solver.num_vectors), (h, w), grid_labels, data.num_classes, True
            )
            whole = affinity_graphs(tokens, spec, ANALYSIS_KNN)
            runs = [
                level_r2(
                    solve(whole, None, replace(solver, seed=s)).vectors.reshape(count, h * w, -1),
                    (h, w),
                    grid_labels,
                    data.num_classes,
                    per_image=False,
                )
                for s in seeds
            ]
            dataset = {
                f"{key}_{stat}": float(getattr(np, stat)([r[key] for r in runs]))
                for key in ("position_r2", "class_r2")
                for stat in ("mean", "std")
            }
            row[kind] = {"image": image, "dataset": dataset}
            print(
                f"{name} layer {layer:2d} {kind}: image pos {image['position_r2']:.3f} cls {image['class_r2']:.3f}"
                f" | set pos {dataset['position_r2_mean']:.3f}±{dataset['position_r2_std']:.3f}"
                f" cls {dataset['class_r2_mean']:.3f}±{dataset['class_r2_std']:.3f}",
                flush=True,
            )
        figures["layers"][layer] = row
    return figures


def plot(figures: dict, path: Path) -> None:
    """R^2 against layer: one column per set, rows position / class at image and set level, a line per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(figures["sets"])
    rows = [
        ("image", "position_r2", "position R², image"),
        ("dataset", "position_r2_mean", "position R², set"),
        ("image", "class_r2", "class R², image"),
        ("dataset", "class_r2_mean", "class R², set"),
    ]
    fig, axes = plt.subplots(len(rows), len(sets), figsize=(4 * len(sets), 2.6 * len(rows)), squeeze=False)
    for j, name in enumerate(sets):
        layers = figures["sets"][name]["layers"]
        xs = [int(layer) for layer in layers]
        for i, (level, key, title) in enumerate(rows):
            ax = axes[i][j]
            for kind in KINDS:
                ys = np.array([layers[layer][kind][level][key] for layer in layers], dtype=float)  # null: NaN
                ax.plot(xs, ys, marker="o", ms=3, label=kind)
                if level == "dataset":
                    std = np.array(
                        [layers[layer][kind][level][key.replace("mean", "std")] for layer in layers], dtype=float
                    )
                    ax.fill_between(xs, ys - std, ys + std, alpha=0.25)
            ax.set_title(f"{name} ({figures['sets'][name]['images']} images): {title}", fontsize=8)
            ax.set_xlabel("block", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite_or_null(value):
    """``value`` with every non-finite float (an R^2 of a constant target, say) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value) -> str:
    """Standard JSON (non-finite figures as null) that any reader parses."""
    return json.dumps(finite_or_null(value), indent=1, allow_nan=False)


def main(
    sets: str = "camvid,cocostuff,voc",
    size: int = 224,
    seeds: str = "0,1,2",
    output: Path = Path("runs/whatwhere"),
    weights: str = "auto",
    layers: list[int] = (1, 3, 5, 7, 9, 11),
) -> dict:
    """Each set's figures are kept in ``OUTPUT/<set>.json`` and reused by a rerun with the same settings."""
    start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    seed_list = [int(s) for s in seeds.split(",")]
    settings = {"size": size, "seeds": seed_list, "layers": list(layers), "weights": weights}
    figures = {**settings, "sets": {}}
    for name in sets.split(","):
        done = output / f"{Path(name).name}.json"  # a folder set: its name
        stored = json.loads(done.read_text()) if done.exists() else {}
        if stored.get("settings") != settings:
            stored = {"settings": settings, "figures": measure_set(name, size, seed_list, weights, list(layers))}
            done.write_text(strict_json(stored))
        figures["sets"][name] = stored["figures"]
    figures["seconds"] = round(time.perf_counter() - start, 1)
    (output / "figures.json").write_text(strict_json(figures))
    plot(figures, output / "whatwhere.png")
    print(f"figures.json and whatwhere.png in {output} ({figures['seconds']} s)")
    return figures


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
