"""Head-training steps per second from the feature cache vs with the backbone on the fly, in one run.

Both train the same head with the same loss on batches of the same number of nodes: from the
cache, a node batch (tokens read from the memory map, rows of the global graph); on the fly, a
batch of images with two random views each, through the frozen backbone, graphs built in the batch.
The cache is built first (not timed: it is paid once). Prints steps/s of each and the speed-up
(goal: >= 10x).

    python bench/train_cached.py [--images 32] [--steps 20]
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence

import torch
from pytorch_lightning.utilities import move_data_to_device
from torch.utils.data import DataLoader

from ultra.backbone.vit import FrozenViT
from ultra.data.cache import CacheConfig, TokenKey, collate_views
from ultra.data.synthetic import SyntheticScenes
from ultra.data.transforms import RandomViews, ViewConfig
from ultra.graphs.knn import GraphSpec, KnnConfig, knn_graph
from ultra.graphs.store import build_view_operator
from ultra.head.batches import BatchConfig, batch_from_entries
from ultra.head.datamodule import HeadDataModule
from ultra.head.sgd_module import SGDHeadModule


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


def batch_from_images(
    backbone: FrozenViT,
    batch: dict,
    keys: Sequence[TokenKey],
    feature_keys: Sequence[TokenKey],
    specs: Sequence[GraphSpec],
    knn: KnnConfig,
) -> dict:
    """A node batch of every token of a batch of images with views (training on the fly, no cache): the
    backbone's ``keys`` tokens, graphs built inside the batch, the views' correspondences."""
    images = batch["image"].flatten(0, 1)
    backbone.to(images.device)
    feats = backbone(images, layers=sorted({layer for _, layer in keys}), kinds=sorted({k for k, _ in keys}))
    grid = feats.grid_size
    tokens = {key: feats[key].flatten(1, 2) for key in keys}
    n_nodes = images.shape[0] * grid[0] * grid[1]
    knn = dataclasses.replace(knn, candidate_images=None)
    every = torch.arange(n_nodes)
    graphs = [
        knn_graph(*(tokens[key] for key in spec.token_keys), knn, device=images.device).entries(every) for spec in specs
    ]
    view = build_view_operator(batch["geometry"].flatten(0, 1).cpu(), batch["geometry"].shape[1], grid).entries(every)
    features = torch.cat([tokens[key].reshape(n_nodes, -1) for key in feature_keys], 1)
    return move_data_to_device(batch_from_entries(features.cpu(), every, graphs, every, view), images.device)


def on_the_fly_batches(data: HeadDataModule, images_per_batch: int):
    """Node batches of every token of ``images_per_batch`` images with two random views each, the backbone and the
    graphs run inside the batch (no cache)."""
    views = data.train_dataset.with_transform(RandomViews(data.views.size, data.views.resize, num_views=2))
    loader = DataLoader(views, batch_size=images_per_batch, shuffle=True, drop_last=True, collate_fn=collate_views)
    keys = sorted(set(data.feature_keys) | {key for g in data.graph_specs for key in g.token_keys})
    return _cycle(
        loader, lambda b: batch_from_images(data.backbone, b, keys, data.feature_keys, data.graph_specs, data.knn)
    )


def _cycle(loader, convert=None):
    while True:
        for batch in loader:
            yield convert(batch) if convert else batch


def main(
    images: int = 32, steps: int = 20, view_size: int = 224, weights: str = "auto", threads: int | None = None
) -> float:
    """Print and return the speed-up of cached over on-the-fly training steps."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    views_per_image, images_per_batch = 2, 8
    with tempfile.TemporaryDirectory() as cache_dir:
        common = dict(
            train_dataset=SyntheticScenes(images, 320, 6),
            backbone="vit_small_patch14_dinov2",
            weights=weights,
            views=ViewConfig(size=view_size),
            cache=CacheConfig(dir=cache_dir),
            seed=0,
            knn=KnnConfig(candidate_images=16),
        )  # the demo's graph
        data = HeadDataModule(**common)
        nodes = images_per_batch * views_per_image * (view_size // data.backbone.patch_size) ** 2  # as on the fly
        data.batches = BatchConfig(nodes=nodes, steps_per_epoch=steps + 1)
        start = time.perf_counter()
        data.prepare_data()
        data.setup("fit")
        build = time.perf_counter() - start
        module = SGDHeadModule(data.head_dim, 50, graph_weights=data.graph_weights)
        optimizer = module.configure_optimizers()
        rate_cached = _time_steps(
            module, optimizer, _cycle(DataLoader(data.node_batches("random"), batch_size=None)), steps
        )
        rate_fly = _time_steps(module, optimizer, on_the_fly_batches(data, images_per_batch), steps)
    speedup = rate_cached / rate_fly
    print(
        f"{images} synthetic images, views of {view_size} px, {nodes} nodes per step, "
        f"{torch.get_num_threads()} threads; cache built once in {build:.1f} s"
    )
    print(f"from the cache      : {rate_cached:8.2f} steps/s")
    print(f"backbone on the fly : {rate_fly:8.2f} steps/s")
    print(f"speed-up            : {speedup:8.1f}x  (goal >= 10x)")
    return speedup


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
