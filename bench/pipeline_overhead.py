"""Throughput of the full segmentation path vs the bare backbone forward, in one run.

Both process the same batch of images at the same size with the same frozen model: the bare
forward is timm's ``forward_features``; the segmentation path is what ``segment`` and the evaluator
run (tokens of the needed layer, head, cosine to centroids, bilinear upsampling to pixels, argmax).
Prints images per second of each and their ratio (goal: >= 0.9).

    python bench/pipeline_overhead.py [--checkpoint runs/demo/model.safetensors] [--size 320] [--batch 8]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch


def _segmenter(checkpoint: Path | None, weights: str):
    from ultra.backbone.vit import FrozenViT
    from ultra.head.projection import ProjectionHead
    from ultra.readout.checkpoint import load
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    if checkpoint is not None:
        return load(checkpoint)
    backbone = FrozenViT("vit_small_patch14_dinov2", weights=weights)
    last = backbone.num_layers - 1
    head = ProjectionHead(backbone.embed_dim, 50)
    return Segmenter(
        backbone, {"head": ClusterReadout([("x", last)], torch.randn(27, 50), head)}, [str(i) for i in range(27)]
    )


def _rate(fn, images: torch.Tensor, repeats: int) -> float:
    fn(images)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(times)


def main(
    checkpoint: Path | None = None,
    weights: str = "auto",
    size: int = 320,
    batch: int = 8,
    repeats: int = 5,
    threads: int | None = None,
) -> float:
    """Print and return the ratio of segmentation-path to bare-backbone throughput."""
    if threads:
        torch.set_num_threads(threads)
    segmenter = _segmenter(checkpoint, weights).eval()
    readout = next(iter(segmenter.readouts))
    backbone = segmenter.backbone
    side = size - size % backbone.patch_size or backbone.patch_size
    images = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def bare(x):
        return backbone.model.forward_features(backbone.normalize(x))

    @torch.inference_mode()
    def segment(x):
        return segmenter.pixel_scores(x)[readout].argmax(1)

    # interleave the two measurements so that machine load affects both alike
    rates_bare, rates_seg = [], []
    for _ in range(3):
        rates_bare.append(_rate(bare, images, repeats))
        rates_seg.append(_rate(segment, images, repeats))
    ips_bare, ips_seg = statistics.median(rates_bare), statistics.median(rates_seg)
    ratio = ips_seg / ips_bare
    print(f"model {backbone.model_name}, {batch} images of {side}x{side} px, {torch.get_num_threads()} threads")
    print(f"bare backbone forward : {ips_bare:7.2f} images/s")
    print(f"segmentation path     : {ips_seg:7.2f} images/s  (readout '{readout}', upsampled to pixels, argmax)")
    print(f"ratio                 : {ratio:7.3f}  (goal >= 0.9)")
    return ratio


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
