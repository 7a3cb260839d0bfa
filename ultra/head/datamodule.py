"""The data of head training: feature cache, global operators and node batches, as a Lightning data module.

The data module owns the frozen backbone and everything derived from it. With the cache (the
default) it builds the feature cache of the training views and the global operators once
(``prepare_data``, on one process per node) and serves node batches (:mod:`ultra.head.batches`).
With ``on_the_fly=True`` it serves images with two random views each and, after the batch reaches
the device, runs the backbone and builds the graphs inside the batch, producing the same
node-batch structure; the head module never sees images either way.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device
from torch.utils.data import DataLoader

from ..graphs.knn import GraphSpec, KnnConfig, knn_graph
from ..backbone.vit import FrozenViT
from ..data.base import SegmentationDataset
from ..data.transforms import CenterView, EvalTransform, FiveCropViews, RandomViews
from ..data.cache import FeatureCache, TokenKey, collate_views
from ..files import cache_root
from .batches import NodeBatches, NodeBatchSampler, batch_from_entries
from ..graphs.store import TrainingOperators, build_view_operator, load_or_build_operators

VIEW_SCHEMES = ("five", "center")
FEATURE_TOKENS = ("x", "n")


class UltraDataModule(pl.LightningDataModule):
    """Data for head training and its evaluation.

    Args:
        train_dataset: images the head is trained on (labels unused, except by the optional probe).
        val_dataset: the evaluation set (the protocol transform is applied here).
        backbone, weights, model_kwargs: the frozen ViT (see :class:`~ultra.backbone.vit.FrozenViT`).
        feature_layers: blocks whose output tokens, concatenated, are the head's input (and, of the
            last, the raw-token baseline's).
        tokens: ``x`` block outputs or ``n`` block outputs through the final LayerNorm, for those.
        graphs: the graphs of the spectral loss (kind, layer, weight).
        knn: neighbours, threshold and candidate images of the global graphs.
        views: ``five`` (five crops of ``crop_fraction`` of the shorter side after resizing it to
            ``resize``, each resized to ``view_size``) or ``center`` (the centre square at ``view_size``).
        flip_views: add the mirror image of every view (doubles the cache).
        eval_resize, eval_crop: the evaluation protocol (shorter side, centre crop).
        batch_nodes, steps_per_epoch: node minibatches.
        on_the_fly: no cache; ``images_per_batch`` images with two random views per step.
        cache_dir: where feature caches live (default: the user cache).
        cache_batch_size, num_workers: backbone batch size while caching; data loader workers.
        seed: node-batch seed (default: the ``seed_everything`` seed, 0 without one).
    """

    def __init__(
        self,
        train_dataset: SegmentationDataset,
        val_dataset: SegmentationDataset | None = None,
        backbone: str = "vit_small_patch14_dinov2",
        weights: str = "auto",
        model_kwargs: dict | None = None,
        feature_layers: list[int] = (-1,),
        tokens: str = "x",
        graphs: list[GraphSpec] = (GraphSpec("feat", -1),),
        knn: KnnConfig = KnnConfig(),
        views: str = "five",
        view_size: int = 224,
        resize: int = 320,
        crop_fraction: float = 0.6,
        flip_views: bool = False,
        eval_resize: int = 320,
        eval_crop: int = 320,
        batch_nodes: int = 4096,
        steps_per_epoch: int = 100,
        on_the_fly: bool = False,
        images_per_batch: int = 8,
        cache_dir: str | None = None,
        cache_batch_size: int = 8,
        num_workers: int = 0,
        seed: int | None = None,
    ):
        super().__init__()
        if views not in VIEW_SCHEMES:
            raise ValueError(f"views must be one of {VIEW_SCHEMES}, got '{views}'")
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.backbone = FrozenViT(backbone, weights=weights, model_kwargs=model_kwargs)
        if tokens not in FEATURE_TOKENS:
            raise ValueError(f"data.tokens must be one of {FEATURE_TOKENS}, got '{tokens}'")
        self.feature_keys: list[TokenKey] = [(tokens, self.backbone.check_layers([layer])[0]) for layer in feature_layers]
        self.graph_specs = [GraphSpec(g.kind, self.backbone.check_layers([g.layer])[0], g.weight) for g in graphs]
        self.knn, self.views, self.view_size, self.resize = knn, views, view_size, resize
        self.crop_fraction, self.flip_views = crop_fraction, flip_views
        self.eval_resize, self.eval_crop = eval_resize, eval_crop
        self.batch_nodes, self.steps_per_epoch = batch_nodes, steps_per_epoch
        self.on_the_fly, self.images_per_batch = on_the_fly, images_per_batch
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "features"
        self.cache_batch_size, self.num_workers, self.seed = cache_batch_size, num_workers, seed
        self.cache: FeatureCache | None = None
        self.timings: dict[str, float] = {}  # seconds of the cache and graph stages of this process (built or loaded)
        self.operators: TrainingOperators | None = None
        if view_size % self.backbone.patch_size:
            raise ValueError(f"view_size={view_size} is not a multiple of the patch size {self.backbone.patch_size} of {backbone}")

    # --- what the head module needs to know ------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.backbone.embed_dim * len(self.feature_keys)

    @property
    def graph_weights(self) -> list[float]:
        return [g.weight for g in self.graph_specs]

    @property
    def class_names(self) -> tuple[str, ...]:
        return (self.val_dataset or self.train_dataset).classes

    @property
    def cache_keys(self) -> list[TokenKey]:
        graph_tokens = {key for g in self.graph_specs for key in g.token_keys}
        return sorted(set(self.feature_keys) | graph_tokens)

    def view_transform(self):
        if self.views == "center":
            return CenterView(self.view_size)
        return FiveCropViews(self.view_size, self.resize, self.crop_fraction, self.flip_views)

    def eval_transform(self) -> EvalTransform:
        return EvalTransform(self.eval_resize, self.eval_crop)

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # --- Lightning hooks -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if not self.on_the_fly:
            start = time.perf_counter()
            cache = self.open_cache()
            self.timings["cache_s"] = time.perf_counter() - start
            start = time.perf_counter()
            load_or_build_operators(cache, self.graph_specs, self.knn, cache.views_per_image > 1, self._device())
            self.timings["graphs_s"] = time.perf_counter() - start

    def open_cache(self) -> FeatureCache:
        """The training set's feature cache (built if missing)."""
        if self.cache is None:
            self.cache = FeatureCache.open_or_build(
                self.train_dataset, self.backbone, self.cache_keys, self.view_transform(), self.cache_dir,
                batch_size=self.cache_batch_size, num_workers=self.num_workers, device=self._device(),
            )
        return self.cache

    def setup(self, stage: str) -> None:
        if self.seed is None:  # the seed given to seed_everything (LightningCLI's seed_everything option)
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if stage == "fit" and not self.on_the_fly:
            cache = self.open_cache()
            self.operators = load_or_build_operators(cache, self.graph_specs, self.knn, cache.views_per_image > 1)

    def train_dataloader(self) -> DataLoader:
        order = getattr(self.trainer.lightning_module, "node_order", "random") if self.trainer is not None else "random"
        if self.on_the_fly:
            if order == "sweep":
                raise ValueError("model.solver 'exact' needs the feature cache (data.on_the_fly false); "
                                 "use model.solver sgd to train on the fly")
            data = self.train_dataset.with_transform(RandomViews(self.view_size, self.resize, num_views=2))
            return DataLoader(data, batch_size=self.images_per_batch, shuffle=True, drop_last=True,
                              num_workers=self.num_workers, collate_fn=collate_views)
        batches = NodeBatches(self.cache, self.feature_keys, self.operators, self.batch_nodes, self.steps_per_epoch,
                              self.seed, order=order)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return DataLoader(batches, batch_size=None, sampler=NodeBatchSampler(batches, world, rank),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.on_the_fly and "image" in batch:
            return self.node_batch_from_images(batch)
        return batch

    def node_batch_from_images(self, batch: dict) -> dict:
        """Backbone, in-batch graphs and view correspondences for a batch of images with views."""
        images = batch["image"].flatten(0, 1)
        self.backbone.to(images.device)
        layers = sorted({layer for _, layer in self.cache_keys})
        feats = self.backbone(images, layers=layers, kinds=sorted({k for k, _ in self.cache_keys}))
        grid = feats.grid_size
        tokens = {key: feats[key].flatten(1, 2) for key in self.cache_keys}
        n_nodes = images.shape[0] * grid[0] * grid[1]
        knn = dataclasses.replace(self.knn, candidate_images=None)
        every = torch.arange(n_nodes)
        graphs = []
        for spec in self.graph_specs:
            graph = knn_graph(*(tokens[key] for key in spec.token_keys), knn, device=images.device)
            graphs.append(graph.entries(every))
        view = build_view_operator(batch["geometry"].flatten(0, 1).cpu(), batch["geometry"].shape[1], grid).entries(every)
        features = torch.cat([tokens[key].reshape(n_nodes, -1) for key in self.feature_keys], 1)
        out = batch_from_entries(features.cpu(), every, graphs, every, view)
        return move_data_to_device(out, images.device)
