"""Cost of relevance maps relative to one backbone forward on the same image, in one run.

For one image: the time of one forward (timm's ``forward_features``), of the maps of all its
tokens (batched reverse passes), and of the maps of an anchor grid of tokens (``--stride``);
prints both ratios (goal for all tokens: < 100 forwards on this CPU).

    python bench/interpret_cost.py [--size 448] [--stride 4] [--layer 11]
"""

from __future__ import annotations

import statistics
import time

import torch


def main(size: int = 448, stride: int = 4, layer: int = 11, weights: str = "auto", chunk: int = 4) -> dict:
    from ultra.analysis.relevance import relevance_maps
    from ultra.backbone.vit import FrozenViT

    vit = FrozenViT("vit_small_patch14_dinov2", weights=weights, layers=[layer], kinds=["x"])
    side = size - size % vit.patch_size
    image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def forward():
        vit.model.forward_features(vit.normalize(image[None]))

    forward()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    one = statistics.median(times)

    def timed(**kwargs) -> tuple[float, int]:
        start = time.perf_counter()
        result = relevance_maps(vit, image, layer=layer, chunk=chunk, **kwargs)
        return time.perf_counter() - start, len(result.targets)

    anchors, n_anchors = timed(stride=stride)
    every, n_all = timed()
    print(f"{vit.model_name}, {side}x{side} px ({n_all} tokens), layer {layer}, {torch.get_num_threads()} threads")
    print(f"one forward                  : {one:8.3f} s")
    print(
        f"maps of all {n_all:4d} tokens      : {every:8.1f} s = {every / one:7.0f} forwards "
        f"({every / one / n_all:.2f} per token)"
    )
    print(f"maps of {n_anchors:4d} anchors (stride {stride}): {anchors:8.1f} s = {anchors / one:7.0f} forwards")
    return {"forward_s": one, "all_ratio": every / one, "anchor_ratio": anchors / one}


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
