"""Cost of relevance maps relative to one backbone forward on the same image, in one run.

For one image: the time of one forward (timm's ``forward_features``), of the maps of all its
tokens (batched reverse passes), and of the maps of an anchor grid of tokens (``--stride``);
prints both ratios (goal for all tokens: < 100 forwards on this CPU). Also the cost of selecting the
object under one click (``ultra.analysis.segments.select``) by token similarity and by the relevance
map, in forwards (median of 5); ``--maps false`` measures the selections alone.

    python bench/interpret_cost.py [--size 448] [--stride 4] [--layer 11] [--maps true]
"""

from __future__ import annotations

import statistics
import time

import torch


def main(
    size: int = 448, stride: int = 4, layer: int = 11, weights: str = "auto", chunk: int = 4, maps: bool = True
) -> dict:
    from ultra.analysis.relevance import relevance_maps
    from ultra.analysis.segments import select
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

    def selection(by: str) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            select(vit, image, (side / 2, side / 2), size=side, by=by)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    print(f"{vit.model_name}, {side}x{side} px, layer {layer}, {torch.get_num_threads()} threads")
    print(f"one forward                  : {one:8.3f} s")
    figures = {"forward_s": one}
    for by in ("similarity", "relevance"):
        seconds = selection(by)
        figures[f"select_{by}_ratio"] = seconds / one
        print(f"select by {by:10s}         : {seconds:8.3f} s = {seconds / one:7.1f} forwards")
    if maps:
        anchors, n_anchors = timed(stride=stride)
        every, n_all = timed()
        print(
            f"maps of all {n_all:4d} tokens      : {every:8.1f} s = {every / one:7.0f} forwards "
            f"({every / one / n_all:.2f} per token)"
        )
        print(f"maps of {n_anchors:4d} anchors (stride {stride}): {anchors:8.1f} s = {anchors / one:7.0f} forwards")
        figures.update(all_ratio=every / one, anchor_ratio=anchors / one)
    return figures


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
