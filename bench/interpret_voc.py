"""Interpretation figures on real photos (../shared/realdata/voc-mini), each against its raw-token baseline.

Segmentation: per image, the segments from the relevance maps of all tokens (K = number of classes
in the image's labels) vs k-means with the same K on the same layer's raw tokens; per-image
Hungarian mIoU, averaged over images. Selection: for every labelled object class of every image,
click the most interior pixel of its region (maximum of the distance transform) and score the
IoU of the selected mask with the region, vs the same threshold on the cosine similarity of the
raw tokens to the clicked token. Writes a sheet per image to ``--output``.

    python bench/interpret_voc.py [--root ../shared/realdata/voc-mini] [--size 224] [--output runs/interpret_voc]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt


def _score(prediction: torch.Tensor, label: torch.Tensor, k: int, num_classes: int) -> dict:
    from ultra.evaluation.metrics import UnsupervisedSegmentationMetric

    metric = UnsupervisedSegmentationMetric(num_classes, num_clusters=k)
    metric.update(prediction[None], label[None])
    result = metric.compute()
    return {"miou": float(result["miou"]), "miou_present": float(result["miou_present"])}


def _iou(mask: torch.Tensor, region: torch.Tensor) -> float:
    return float((mask & region).sum() / (mask | region).sum())


def main(
    root: Path = Path("../shared/realdata/voc-mini"),
    size: int = 224,
    layer: int = 11,
    num_classes: int = 21,
    output: Path = Path("runs/interpret_voc"),
    weights: str = "auto",
) -> dict:
    from ultra.analysis.relevance import relevance_maps
    from ultra.analysis.segments import mask_from_map, prepare_image, segments_from_maps
    from ultra.backbone.vit import FrozenViT
    from ultra.data import ImageFolder
    from ultra.data.grids import upsample_scores
    from ultra.data.transforms import image_to_tensor
    from ultra.pictures import overlay, overlay_mask, save_sheet
    from ultra.readout.kmeans import kmeans

    vit = FrozenViT("vit_small_patch14_dinov2", weights=weights, layers=[layer], kinds=["x"])
    data = ImageFolder(root, classes=num_classes)
    output.mkdir(parents=True, exist_ok=True)
    seg = {"maps": [], "raw": []}
    sel = {"maps": [], "raw": []}
    start = time.perf_counter()
    for item in data:
        picture = item["image"].permute(1, 2, 0).numpy()
        label = item["label"]
        hw = tuple(label.shape)
        image = prepare_image(vit, image_to_tensor(picture), size)
        result = relevance_maps(vit, image, layer=layer)
        tokens = vit(image[None])["x", layer][0]  # [h, w, D]
        grid = result.grid
        present = [int(c) for c in label.unique() if c != 255]
        k = max(2, len(present))
        segments, _ = segments_from_maps(result, hw, num_segments=k)
        flat = tokens.reshape(-1, tokens.shape[-1])
        centroids = kmeans(flat, k, restarts=5, seed=0).centroids
        scores = (F.normalize(flat, dim=-1) @ centroids.T).T.reshape(k, *grid)
        raw_segments = upsample_scores(scores[None], hw)[0].argmax(0)
        seg["maps"].append(_score(segments, label, k, num_classes))
        seg["raw"].append(_score(raw_segments, label, k, num_classes))
        panels, titles = (
            [
                picture,
                overlay(picture, label.numpy()),
                overlay(picture, segments.numpy()),
                overlay(picture, raw_segments.numpy()),
            ],
            ["image", "ground truth", "segments from maps", "raw k-means"],
        )
        for cls in present:
            if cls == 0:  # background is not an object
                continue
            region = label == cls
            depth = distance_transform_edt(region.numpy())
            y, x = np.unravel_index(depth.argmax(), depth.shape)
            token = int(y * grid[0] // hw[0]) * grid[1] + int(x * grid[1] // hw[1])
            mask = mask_from_map(result.maps[token], hw)
            similarity = (F.normalize(flat, dim=-1) @ F.normalize(flat[token], dim=0)).reshape(grid)
            raw_mask = mask_from_map(similarity, hw)
            sel["maps"].append(_iou(mask, region))
            sel["raw"].append(_iou(raw_mask, region))
            panels += [overlay_mask(picture, mask.numpy()), overlay_mask(picture, raw_mask.numpy())]
            titles += [f"class {cls}: map IoU {sel['maps'][-1]:.2f}", f"raw cosine IoU {sel['raw'][-1]:.2f}"]
        save_sheet([panels], [titles], output / f"{data.samples[item['index']].name}.png")
        print(
            f"{data.samples[item['index']].name}: K={k} maps {seg['maps'][-1]['miou_present']:.3f} raw "
            f"{seg['raw'][-1]['miou_present']:.3f}",
            flush=True,
        )
    figures = {
        "images": len(data),
        "size": size,
        "layer": layer,
        "regions": len(sel["maps"]),
        "segmentation": {
            name: {key: float(np.mean([s[key] for s in v])) for key in ("miou", "miou_present")}
            for name, v in seg.items()
        },
        "selection_iou": {name: float(np.mean(v)) for name, v in sel.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output / "figures.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
