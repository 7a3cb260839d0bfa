"""Head-training steps per second from the feature cache vs with the backbone on the fly, in one run.

Both train the same head with the same loss on batches of the same number of nodes: from the
cache, a node batch (tokens read from the memory map, rows of the global graph); on the fly, a
batch of images with two random views each, through the frozen backbone, graphs built in the batch.
The cache is built first (not timed: it is paid once). Prints steps/s of each and the speed-up
(goal: >= 10x).

    python bench/train_cached.py [--images 32] [--steps 20]
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch


def _time_steps(module, optimizer, batches, steps: int) -> float:
    times = []
    iterator = iter(batches)
    for _ in range(steps + 1):
        start = time.perf_counter()
        batch = next(iterator)
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1 / statistics.median(times[1:])  # the first step warms up


def _cycle(loader, convert=None):
    while True:
        for batch in loader:
            yield convert(batch) if convert else batch


def main(images: int = 32, steps: int = 20, view_size: int = 224, weights: str = "auto", threads: int | None = None) -> float:
    """Print and return the speed-up of cached over on-the-fly training steps."""
    from ultra.data import SyntheticScenes
    from ultra.graphs.knn import KnnConfig
    from ultra.head.datamodule import (
        BatchConfig,
        CacheConfig,
        UltraDataModule,
        ViewConfig,
    )
    from ultra.head.module import SpectralHeadModule

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    views_per_image, images_per_batch = 2, 8
    with tempfile.TemporaryDirectory() as cache_dir:
        common = dict(train_dataset=SyntheticScenes(images, 320, 6), backbone="vit_small_patch14_dinov2", weights=weights,
                      views=ViewConfig(size=view_size), cache=CacheConfig(dir=cache_dir), seed=0,
                      knn=KnnConfig(candidate_images=16))  # the demo's graph
        patch = UltraDataModule(**common).backbone.patch_size
        nodes = images_per_batch * views_per_image * (view_size // patch) ** 2  # the same nodes per step as on the fly
        cached = UltraDataModule(**common, batches=BatchConfig(nodes=nodes, steps_per_epoch=steps + 1))
        start = time.perf_counter()
        cached.prepare_data()
        cached.setup("fit")
        build = time.perf_counter() - start
        module = SpectralHeadModule(cached.head_dim, 50, graph_weights=cached.graph_weights)
        optimizer = module.configure_optimizers()
        rate_cached = _time_steps(module, optimizer, _cycle(cached.train_dataloader()), steps)

        fly = UltraDataModule(**common, batches=BatchConfig(steps_per_epoch=steps + 1, on_the_fly=True,
                                                            images_per_batch=images_per_batch))
        fly.setup("fit")
        rate_fly = _time_steps(module, optimizer, _cycle(fly.train_dataloader(), lambda b: fly.on_after_batch_transfer(b, 0)), steps)
    speedup = rate_cached / rate_fly
    print(f"{images} synthetic images, views of {view_size} px, {nodes} nodes per step, "
          f"{torch.get_num_threads()} threads; cache built once in {build:.1f} s")
    print(f"from the cache      : {rate_cached:8.2f} steps/s")
    print(f"backbone on the fly : {rate_fly:8.2f} steps/s")
    print(f"speed-up            : {speedup:8.1f}x  (goal >= 10x)")
    return speedup


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
