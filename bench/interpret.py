"""ULTra's maps on real photos (camvid val, cocostuff-dev val, voc-mini), each against its raw-token baseline.

Selection: every object of every image is clicked by the rule of :mod:`ultra.analysis.clicks` (the most
interior pixel of each connected class region of at least 2% of the image; VOC's background is not an
object); each selection method turns the clicked token into a map over the token grid, the same
threshold rule (Otsu's on the map, bilinear upsampling, the clicked patch always in) makes the mask, and
the score is its IoU with the clicked region, averaged over clicks. Methods (``--methods``):

- ``relevance``: the clicked token's relevance map (ULTra; ``ultra-select`` before this bench);
- ``cosine``: the cosine of every token to the clicked token (the raw-token baseline); ``cosine@B``: at block ``B``
  instead of the maps'; ``similarity@B``: :func:`ultra.analysis.segments.similarity_maps` (the squared cosine,
  negatives 0) at block ``B`` (``similarity@8+region`` is ``ultra-select``'s default on DINOv2-S/14);
- ``product``: the relevance map (scaled to a maximum of 1) times the cosine map (clamped at 0);
- ``cluster``: the clicked pixel's cluster of a trained head (``--checkpoints``; scores on the same tokens,
  upsampled), as :func:`ultra.analysis.segments.select_cluster`;
- ``<method>&cluster``: the method's mask within the clicked pixel's cluster;
- ``<method>+region``: the mask kept to its 8-connected part under the click.

Segmentation (the first ``--segment_images`` images of each set): the maps of an anchor grid of tokens
(stride 2) clustered by :func:`ultra.analysis.segments.segments_from_maps` with K = the classes present
(``maps``; ``product``: each anchor's relevance map times its similarity map, as for selection; ``product_sq``:
times the squared similarity of :func:`ultra.analysis.segments.similarity_maps`; ``_kmeans``: clustered by
k-means instead of average linkage, 3 seeds),
against k-means (K, seeds ``--seeds``) on the same layer's raw tokens; per-image Hungarian mIoU over the
classes present, averaged over images.

The relevance maps are cached per image in ``OUTPUT/maps`` (they dominate the time), so other methods
on the same maps cost seconds. Writes ``figures.json`` and a sheet per set.

``--split train`` measures on camvid's and cocostuff-dev's training images instead (how ``ultra-select``'s
default was chosen: ``--split train --sets camvid,cocostuff --segment_images 0 --methods
cosine@5+region,...,similarity@10+region``).

    python bench/interpret.py [--sets camvid,cocostuff,voc] [--split val] [--size 224] [--layer 11]
        [--output runs/interpret]
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from realsets import open_set

SKIP = {"voc": (0,)}
SEGMENTATIONS = ("maps", "product", "product_sq")
SEEDED = ("raw_kmeans", *(f"{m}_kmeans" for m in SEGMENTATIONS))
METHODS = (
    "relevance",
    "cosine",
    "product",
    "relevance+region",
    "cosine+region",
    "product+region",
    "cluster+region",
    "cosine&cluster+region",
    "product&cluster+region",
    "cosine@8+region",
    "similarity@8+region",
)


def base_method(method: str) -> str:
    """The map a selection method starts from (``cosine@8`` of ``cosine@8&cluster+region``)."""
    return method.split("+")[0].split("&")[0]


def method_blocks(methods: list[str]) -> list[int]:
    """The blocks the ``cosine@B`` and ``similarity@B`` methods read."""
    return sorted({int(base_method(m).split("@")[1]) for m in methods if "@" in base_method(m)})


def selection_map(method: str, maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """The grid map a selection method thresholds, among the click's ``relevance``, ``cosine``, ``cosine@B``,
    ``similarity@B`` and ``product`` (:func:`ultra.analysis.segments.similarity_weighted`) maps; ``&cluster`` and
    ``+region`` act on the mask."""
    base = base_method(method)
    if base == "cluster":
        return torch.ones_like(maps["cosine"])
    if base not in maps:
        raise ValueError(f"unknown selection method '{method}'")
    return maps[base]


def iou(mask: np.ndarray, region: np.ndarray) -> float:
    return float((mask & region).sum() / (mask | region).sum())


def image_maps(vit, image, layer: int, targets: torch.Tensor, cache: Path, score: str):
    """The relevance maps of ``targets`` (sorted), kept per image in ``cache`` as float16 with every target any run
    asked for: a target's map is computed once (runs that need other targets add theirs), and a fresh run reads
    back the stored values too, so a rerun prints the same figures."""
    from ultra.analysis.relevance import RelevanceMaps, relevance_maps

    known, maps, grid = torch.zeros(0, dtype=torch.long), None, None
    if cache.exists():
        stored = torch.load(cache, weights_only=True)
        known, maps, grid = stored["targets"], stored["maps"], tuple(stored["grid"].tolist())
    missing = targets[~torch.isin(targets, known)]
    if len(missing):
        result = relevance_maps(vit, image, layer=layer, targets=missing, score=score, chunk=16)
        union = torch.cat([known, missing])
        order = union.argsort()
        added = result.maps.half()
        known, maps, grid = union[order], (added if maps is None else torch.cat([maps, added]))[order], result.grid
        partial = cache.with_suffix(".partial")
        torch.save({"targets": known, "maps": maps, "grid": torch.tensor(grid)}, partial)
        partial.replace(cache)
    return RelevanceMaps(maps[torch.searchsorted(known, targets)].float(), targets, layer, grid)


def per_image_miou(prediction: torch.Tensor, label: torch.Tensor, k: int, num_classes: int) -> float:
    from ultra.evaluation.metrics import UnsupervisedSegmentationMetric

    metric = UnsupervisedSegmentationMetric(num_classes, num_clusters=k)
    metric.update(prediction[None], label[None])
    return float(metric.compute()["miou_present"])


def measure_set(
    name, split, vit, size, layer, score, methods, seeds, segment_images, min_fraction, output, segmenter
) -> dict:
    from ultra.analysis.clicks import interior_clicks
    from ultra.analysis.masks import mask_from_map
    from ultra.analysis.points import point_token, region_under, token_pixels
    from ultra.analysis.relevance import RelevanceMaps, anchor_targets
    from ultra.analysis.segments import (
        cosine_maps,
        head_clusters,
        prepare_image,
        segments_from_maps,
        similarity_maps,
        similarity_weighted,
    )
    from ultra.data.grids import upsample_scores
    from ultra.readout.kmeans import kmeans

    data = open_set(name, split)
    tag = "" if split == "val" else f"-{split}"
    folder = output / "maps" / f"{Path(name).name}{tag}-{size}-{layer}-{score}"  # a folder set: its name
    folder.mkdir(parents=True, exist_ok=True)
    selection = {method: [] for method in methods}
    segmentation = {name: [] for name in [*SEGMENTATIONS] + [f"{m}_seed{s}" for m in SEEDED for s in seeds]}
    for index in range(len(data)):
        item = data[index]
        label = item["label"]
        hw = tuple(label.shape)
        image = prepare_image(vit, item["image"].float() / 255, size)
        features = vit(image[None], layers=sorted({layer, *method_blocks(methods)}), kinds=["x"])
        tokens = features["x", layer][0]
        grid = tuple(tokens.shape[:2])
        unit = F.normalize(tokens.reshape(-1, tokens.shape[-1]), dim=-1)
        if segmenter is not None:
            clusters = head_clusters(segmenter, item["image"].float() / 255, size)
        clicks = interior_clicks(label.numpy(), min_fraction, SKIP.get(name, ()))
        click_tokens = torch.tensor([point_token((c.x, c.y), hw, grid) for c in clicks], dtype=torch.long)
        segment = index < segment_images and bool((label != 255).any())  # no labelled pixel: nothing to score
        if not clicks and not segment:
            print(f"{name} {index + 1}/{len(data)}: no click (no labelled region above the floor), skipped", flush=True)
            continue
        anchors = anchor_targets(grid, 2) if segment else torch.zeros(0, dtype=torch.long)
        targets = torch.unique(torch.cat([click_tokens, anchors]))
        if segment or any(base_method(m) in ("relevance", "product") for m in methods):
            maps = image_maps(vit, image, layer, targets, folder / f"{data.samples[index].name}.pt", score).maps
        else:  # the raw-token methods alone need no relevance map
            maps = torch.zeros(len(targets), *grid)
        row = {int(t): i for i, t in enumerate(targets)}
        clicked = RelevanceMaps(maps[[row[t] for t in click_tokens.tolist()]], click_tokens, layer, grid)
        candidates = {
            "relevance": clicked.maps,
            "cosine": cosine_maps(tokens, click_tokens),
            "product": similarity_weighted(clicked, tokens).maps,
            **{f"cosine@{b}": cosine_maps(features["x", b][0], click_tokens) for b in method_blocks(methods)},
            **{f"similarity@{b}": similarity_maps(features["x", b][0], click_tokens) for b in method_blocks(methods)},
        }
        for c, (click, token) in enumerate(zip(clicks, click_tokens.tolist())):
            own = token_pixels(token, hw, grid).numpy()
            maps_of_click = {k: v[c] for k, v in candidates.items()}
            for method in methods:
                mask = mask_from_map(selection_map(method, maps_of_click), hw).numpy() | own
                if "cluster" in method:
                    mask &= (clusters == clusters[click.y, click.x]).numpy()
                if method.endswith("+region"):
                    mask = region_under(torch.from_numpy(mask), (click.x, click.y)).numpy()
                selection[method].append(iou(mask, click.region))
        if segment:
            present = int((label.unique() != 255).sum())
            k = max(2, present)
            relevance = RelevanceMaps(maps[[row[int(t)] for t in anchors]], anchors, layer, grid)
            unit_max = relevance.maps / relevance.maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            variants = {
                "maps": relevance,
                "product": similarity_weighted(relevance, tokens),
                "product_sq": replace(relevance, maps=unit_max * similarity_maps(tokens, anchors)),
            }
            for method, result_maps in variants.items():
                segments, _ = segments_from_maps(result_maps, hw, num_segments=k)
                segmentation[method].append(per_image_miou(segments, label, k, data.num_classes))
                for seed in seeds:
                    segments, _ = segments_from_maps(result_maps, hw, num_segments=k, clustering="kmeans", seed=seed)
                    segmentation[f"{method}_kmeans_seed{seed}"].append(
                        per_image_miou(segments, label, k, data.num_classes)
                    )
            for seed in seeds:
                centroids = kmeans(tokens.reshape(-1, tokens.shape[-1]), k, restarts=5, seed=seed).centroids
                scores = (unit @ F.normalize(centroids, dim=-1).T).T.reshape(k, *grid)
                raw = upsample_scores(scores[None], hw)[0].argmax(0)
                segmentation[f"raw_kmeans_seed{seed}"].append(per_image_miou(raw, label, k, data.num_classes))
        print(f"{name} {index + 1}/{len(data)}: {len(clicks)} clicks", flush=True)
    return {
        "images": len(data),
        "clicks": len(selection[methods[0]]),
        "selection_iou": {method: float(np.mean(v)) for method, v in selection.items()},
        "segmentation": segmentation_figures(segmentation, seeds) if segment_images else None,
    }


def segmentation_figures(segmentation: dict, seeds: list[int]) -> dict:
    """Mean per-image mIoU of each method (mean and sample standard deviation over seeds for the seeded ones)."""
    seeded = {m: [float(np.mean(segmentation[f"{m}_seed{s}"])) for s in seeds] for m in SEEDED}
    return {
        "images": len(segmentation["maps"]),
        **{f"{m}_miou": float(np.mean(segmentation[m])) for m in SEGMENTATIONS},
        **{f"{m}_miou_mean": float(np.mean(v)) for m, v in seeded.items()},
        **{f"{m}_miou_std": float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in seeded.items()},
    }


def main(
    sets: str = "camvid,cocostuff,voc",
    split: str = "val",
    size: int = 224,
    layer: int = 11,
    score: str = "norm",
    methods: str = ",".join(METHODS),
    seeds: str = "0,1,2",
    segment_images: int = 20,
    min_fraction: float = 0.02,
    output: Path = Path("runs/interpret"),
    weights: str = "auto",
    checkpoints: dict[str, str] | None = None,
) -> dict:
    """``checkpoints``: a trained checkpoint per set (its head's clusters for the ``cluster`` methods)."""
    from ultra import load
    from ultra.backbone.vit import FrozenViT

    start = time.perf_counter()
    vit = FrozenViT("vit_small_patch14_dinov2", weights=weights, kinds=["x"])
    output.mkdir(parents=True, exist_ok=True)
    method_list, seed_list = methods.split(","), [int(s) for s in seeds.split(",")]
    figures = {"split": split, "size": size, "layer": layer, "score": score, "min_fraction": min_fraction, "sets": {}}
    for name in sets.split(","):
        segmenter = load(checkpoints[name]) if checkpoints and name in checkpoints else None
        chosen = [m for m in method_list if segmenter is not None or "cluster" not in m]
        if len(chosen) < len(method_list):
            print(f"{name}: no checkpoint, so no cluster methods ({', '.join(sorted(set(method_list) - set(chosen)))})")
        figures["sets"][name] = measure_set(
            name, split, vit, size, layer, score, chosen, seed_list, segment_images, min_fraction, output, segmenter
        )
        print(json.dumps(figures["sets"][name], indent=1), flush=True)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    (output / "figures.json").write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
