"""The data the head is fitted on, as a Lightning data module: feature cache, global graphs, node batches.

:class:`HeadDataModule` builds the feature cache of the training views and the global graphs once
(``prepare_data``, on one process per node) and serves node batches (:mod:`ultra.head.batches`) in
the order the head's solver asks for; the head module never sees images. It also carries what the
rest of a training run reads from the same settings: the evaluation set and the class
names. The frozen backbone is built the first time it is needed.
"""

from __future__ import annotations

import os
import time
from functools import cached_property

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..backbone.names import DEFAULT_BACKBONE
from ..backbone.precision import check_precision
from ..backbone.vit import BackboneShape, FrozenViT, backbone_shape
from ..data.base import SegmentationDataset
from ..data.cache import CacheConfig, FeatureCache, TokenKey
from ..data.transforms import ViewConfig
from ..errors import ConfigError
from ..graphs.knn import GraphSpec, KnnConfig
from ..graphs.store import TrainingGraphs, load_or_build_graphs
from .batches import BatchConfig, NodeBatches, NodeBatchSampler

FEATURE_TOKENS = ("x", "n")


class HeadDataModule(pl.LightningDataModule):
    """The head's training data (feature cache, global graphs, node batches) and the run's evaluation set.

    Args:
        train_dataset: images the head is trained on (labels unused, except by the optional probe).
        val_dataset: the evaluation set (the run applies the ``evaluation`` group's geometry to it).
        backbone: the frozen ViT (a timm name or alias, see :class:`~ultra.backbone.vit.FrozenViT`).
        weights: its weights: auto, hub, offline, random or a file.
        model_kwargs: architecture sizes passed to ``timm.create_model`` (a custom ViT).
        precision: the backbone's arithmetic: ``auto`` (bfloat16 where the hardware runs it natively, else
            float32), ``bf16`` or ``fp32`` (:mod:`ultra.backbone.precision`).
        feature_layers: blocks whose tokens, concatenated, are the head's input (and, of the last,
            the raw-token baseline's).
        tokens: ``x`` block outputs or ``n`` block outputs through the final LayerNorm, for those.
        graphs: the graphs of the spectral loss (kind, layer, weight).
        knn: neighbours, threshold and candidate images of the global graphs.
        views: the training views of the cache.
        batches: node minibatches.
        cache: the feature cache's folder and batch size.
        num_workers: data loader workers (caching, node batches, evaluation).
        seed: node-batch seed (default: the ``seed_everything`` seed, 0 without one).
    """

    def __init__(
        self,
        train_dataset: SegmentationDataset,
        val_dataset: SegmentationDataset | None = None,
        backbone: str = DEFAULT_BACKBONE,
        weights: str = "auto",
        model_kwargs: dict | None = None,
        precision: str = "auto",
        feature_layers: list[int] = (-1,),
        tokens: str = "x",
        graphs: list[GraphSpec] = (GraphSpec("xx", -1),),
        knn: KnnConfig = KnnConfig(),
        views: ViewConfig = ViewConfig(),
        batches: BatchConfig = BatchConfig(),
        cache: CacheConfig = CacheConfig(),
        num_workers: int = 0,
        seed: int | None = None,
    ):
        super().__init__()
        if tokens not in FEATURE_TOKENS:
            raise ConfigError(f"data.tokens must be one of {FEATURE_TOKENS}, got '{tokens}'")
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.backbone_args = {
            "model_name": backbone,
            "weights": weights,
            "model_kwargs": model_kwargs,
            "precision": check_precision(precision, "data.precision"),
        }
        self.feature_layers, self.tokens, self.graphs = list(feature_layers), tokens, list(graphs)
        self.knn, self.views, self.batches, self.cache_config = knn, views, batches, cache
        self.num_workers, self.seed = num_workers, seed
        self.cache: FeatureCache | None = None
        self.training_graphs: TrainingGraphs | None = None
        self.timings: dict[str, float] = {}  # seconds of the cache and graph stages of this process (built or loaded)

    @staticmethod
    def head_arguments(init_args: dict, random_batches: bool) -> dict:
        """The arguments that determine the head: not the evaluation set (``val_dataset``), not speed's (``cache``,
        ``num_workers``), and the node batches and their seed only when they are random."""
        drop = {"val_dataset", "cache", "num_workers"} | (set() if random_batches else {"batches", "seed"})
        return {k: v for k, v in init_args.items() if k not in drop}

    # --- the backbone and what it decides --------------------------------------------------------
    @cached_property
    def shape(self) -> BackboneShape:
        """The backbone's sizes (read without its weights), with the settings that depend on them checked."""
        shape = backbone_shape(self.backbone_args["model_name"], self.backbone_args["model_kwargs"])
        if self.views.size % shape.patch_size:
            raise ConfigError(
                f"data.views.size={self.views.size} is not a multiple of the patch size {shape.patch_size} of "
                f"{self.backbone_args['model_name']}"
            )
        self.knn.check_counts((self.views.size // shape.patch_size) ** 2)
        shape.check_layers(self.feature_layers)
        shape.check_layers([g.layer for g in self.graphs])
        return shape

    @cached_property
    def backbone(self) -> FrozenViT:
        """The frozen ViT, built (weights loaded) on first use, once its settings are checked."""
        self.shape  # noqa: B018 - the settings first: a wrong one is refused before any weights are read
        return FrozenViT(**self.backbone_args)

    @cached_property
    def feature_keys(self) -> list[TokenKey]:
        """The token keys the head reads, in the config's order, layers counted from the start."""
        return [(self.tokens, self.shape.check_layers([layer])[0]) for layer in self.feature_layers]

    @cached_property
    def graph_specs(self) -> list[GraphSpec]:
        """The graphs of the loss, layers counted from the start."""
        return [GraphSpec(g.kind, self.shape.check_layers([g.layer])[0], g.weight) for g in self.graphs]

    @property
    def num_training_tokens(self) -> int:
        """The tokens the training cache holds (images x views x tokens per view)."""
        return len(self.train_dataset) * self.views.views_per_image * (self.views.size // self.shape.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.shape.embed_dim * len(self.feature_layers)

    @property
    def graph_weights(self) -> list[float]:
        return [g.weight for g in self.graphs]

    @property
    def class_names(self) -> tuple[str, ...]:
        return (self.val_dataset or self.train_dataset).classes

    @property
    def cache_keys(self) -> list[TokenKey]:
        graph_tokens = {key for g in self.graph_specs for key in g.token_keys}
        return sorted(set(self.feature_keys) | graph_tokens)

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # --- Lightning hooks -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build the cache and the training graphs (one process per node); :meth:`setup` then opens them."""
        start = time.perf_counter()
        self.open_cache()
        self.timings["cache_s"] = time.perf_counter() - start
        start = time.perf_counter()
        self.open_graphs(self._device())
        self.timings["graphs_s"] = time.perf_counter() - start

    def open_cache(self) -> FeatureCache:
        """The training set's feature cache (built if missing)."""
        if self.cache is None:
            self.cache = FeatureCache.open_or_build(
                self.train_dataset,
                self.backbone,
                self.cache_keys,
                self.views.transform(),
                self.cache_config.folder(),
                batch_size=self.cache_config.batch_size,
                num_workers=self.num_workers,
                device=self._device(),
            )
        return self.cache

    def open_graphs(self, device: str | torch.device = "cpu") -> TrainingGraphs:
        """The training graphs of the cache (built on ``device`` if missing, memory-mapped once they exist)."""
        if self.training_graphs is None:
            cache = self.open_cache()
            self.training_graphs = load_or_build_graphs(
                cache, self.graph_specs, self.knn, cache.views_per_image > 1, device
            )
        return self.training_graphs

    def setup(self, stage: str) -> None:
        if self.seed is None:  # the seed given to seed_everything (LightningCLI's seed_everything option)
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if stage == "fit":
            self.open_graphs()

    def node_batches(self, order: str) -> NodeBatches:
        """The node batches of the cache in ``order`` (``random`` or ``sweep``)."""
        return NodeBatches(
            self.open_cache(),
            self.feature_keys,
            self.open_graphs(),
            self.batches.nodes,
            self.batches.steps_per_epoch,
            self.seed or 0,
            order=order,
        )

    def train_dataloader(self) -> DataLoader:
        """Node batches in the order the trained module's solver needs (``node_order``: sweep or random)."""
        batches = self.node_batches(self.trainer.lightning_module.node_order)
        sampler = NodeBatchSampler(batches, self.trainer.world_size, self.trainer.global_rank)
        return DataLoader(
            batches,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
