"""The data of head training: feature cache, global operators and node batches, as a Lightning data module.

The data module owns the frozen backbone and everything derived from it. With the cache (the
default) it builds the feature cache of the training views and the global operators once
(``prepare_data``, on one process per node) and serves node batches (:mod:`ultra.head.batches`).
With ``on_the_fly=True`` it serves images with two random views each and, after the batch reaches
the device, runs the backbone and builds the graphs inside the batch, producing the same
node-batch structure; the head module never sees images either way.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..backbone.vit import FrozenViT
from ..data.base import SegmentationDataset
from ..data.cache import FeatureCache, TokenKey, collate_views
from ..data.transforms import CenterView, FiveCropViews, RandomViews
from ..errors import ConfigError
from ..evaluation.geometry import EvalConfig
from ..files import cache_root
from ..graphs.knn import GraphSpec, KnnConfig
from ..graphs.store import TrainingOperators, load_or_build_operators
from .batches import NodeBatches, NodeBatchSampler, batch_from_images

VIEW_SCHEMES = ("five", "center")
FEATURE_TOKENS = ("x", "n")


@dataclass(frozen=True)
class ViewConfig:
    """The training views the cache holds.

    Args:
        scheme: ``five`` (five crops of ``crop_fraction`` of the shorter side after resizing it to
            ``resize``, each resized to ``size``) or ``center`` (the centre square at ``size``).
        size: side of a view in pixels (a multiple of the patch size).
        resize: shorter side before cropping (``five``).
        crop_fraction: side of a crop as a fraction of the shorter side (``five``).
        flip: add the mirror image of every view (doubles the cache).
    """

    scheme: str = "five"
    size: int = 224
    resize: int = 320
    crop_fraction: float = 0.6
    flip: bool = False

    def __post_init__(self):
        if self.scheme not in VIEW_SCHEMES:
            raise ConfigError(f"data.views.scheme must be one of {VIEW_SCHEMES}, got '{self.scheme}'")
        if self.size < 1 or self.resize < 1 or not 0 < self.crop_fraction <= 1:
            raise ConfigError(f"data.views: size and resize must be >= 1 and crop_fraction in (0, 1], got "
                             f"{self.size}, {self.resize}, {self.crop_fraction}")

    @property
    def views_per_image(self) -> int:
        """The views the cache holds of each image."""
        return 1 if self.scheme == "center" else 5 * (2 if self.flip else 1)

    def transform(self):
        """The view transform of the cache."""
        if self.scheme == "center":
            return CenterView(self.size)
        return FiveCropViews(self.size, self.resize, self.crop_fraction, self.flip)


def check_neighbour_counts(knn: KnnConfig, tokens_per_view: int) -> None:
    """Refuse, before any work, neighbour counts that a view's tokens and its candidate images cannot supply."""
    if knn.k_intra > tokens_per_view - 1:
        raise ConfigError(f"data.knn.k_intra={knn.k_intra} exceeds the {tokens_per_view - 1} other tokens of a view")
    if knn.candidate_images is not None:
        searched = (knn.candidate_images + 1) * tokens_per_view - 1
        if knn.k_any > searched or knn.k_inter > knn.candidate_images * tokens_per_view:
            raise ConfigError(f"data.knn.k_any={knn.k_any} / k_inter={knn.k_inter} exceed the tokens searched: a view's "
                              f"{tokens_per_view} and those of its {knn.candidate_images} candidate images; raise "
                              f"data.knn.candidate_images or lower the counts")


@dataclass(frozen=True)
class BatchConfig:
    """Node minibatches.

    Args:
        nodes: nodes per batch (the exact solver sweeps all nodes in batches of this size: memory only).
        steps_per_epoch: batches per epoch (``sgd``).
        on_the_fly: no cache (``sgd``): ``images_per_batch`` images with two random views each per step,
            graphs built inside the batch.
        images_per_batch: images per step on the fly.
    """

    nodes: int = 4096
    steps_per_epoch: int = 100
    on_the_fly: bool = False
    images_per_batch: int = 8


@dataclass(frozen=True)
class CacheConfig:
    """The feature cache.

    Args:
        dir: where feature caches live (default: ``features/`` in the user cache, ``$ULTRA_CACHE_DIR`` or ``~/.cache/ultra``).
        batch_size: images per backbone batch while caching.
    """

    dir: str | None = None
    batch_size: int = 8


class UltraDataModule(pl.LightningDataModule):
    """Data for head training and its evaluation.

    Args:
        train_dataset: images the head is trained on (labels unused, except by the optional probe).
        val_dataset: the evaluation set (the protocol transform is applied here).
        backbone: the frozen ViT (a timm name or alias, see :class:`~ultra.backbone.vit.FrozenViT`).
        weights: its weights: auto, hub, offline, random or a file.
        model_kwargs: architecture sizes passed to ``timm.create_model`` (a custom ViT).
        feature_layers: blocks whose tokens, concatenated, are the head's input (and, of the last,
            the raw-token baseline's).
        tokens: ``x`` block outputs or ``n`` block outputs through the final LayerNorm, for those.
        graphs: the graphs of the spectral loss (kind, layer, weight).
        knn: neighbours, threshold and candidate images of the global graphs.
        views: the training views of the cache.
        evaluation: the evaluation protocol's geometry.
        batches: node minibatches.
        cache: the feature cache's folder and batch size.
        num_workers: data loader workers (caching, node batches, evaluation).
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
        views: ViewConfig = ViewConfig(),
        evaluation: EvalConfig = EvalConfig(),
        batches: BatchConfig = BatchConfig(),
        cache: CacheConfig = CacheConfig(),
        num_workers: int = 0,
        seed: int | None = None,
    ):
        super().__init__()
        if tokens not in FEATURE_TOKENS:
            raise ConfigError(f"data.tokens must be one of {FEATURE_TOKENS}, got '{tokens}'")
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.backbone = FrozenViT(backbone, weights=weights, model_kwargs=model_kwargs)
        self.feature_keys: list[TokenKey] = [(tokens, self.backbone.check_layers([layer])[0]) for layer in feature_layers]
        self.graph_specs = [GraphSpec(g.kind, self.backbone.check_layers([g.layer])[0], g.weight) for g in graphs]
        if views.size % self.backbone.patch_size:
            raise ConfigError(f"data.views.size={views.size} is not a multiple of the patch size "
                             f"{self.backbone.patch_size} of {backbone}")
        check_neighbour_counts(knn, (views.size // self.backbone.patch_size) ** 2)
        self.knn, self.views, self.evaluation, self.batches = knn, views, evaluation, batches
        self.cache_dir = Path(cache.dir) if cache.dir else cache_root() / "features"
        self.cache_batch_size, self.num_workers, self.seed = cache.batch_size, num_workers, seed
        self.cache: FeatureCache | None = None
        self.operators: TrainingOperators | None = None
        self.timings: dict[str, float] = {}  # seconds of the cache and graph stages of this process (built or loaded)

    @staticmethod
    def head_settings(init_args: dict, sgd: bool) -> dict:
        """The arguments that determine the head: not the evaluation's (``val_dataset``, ``evaluation``), not
        speed's (``cache``, ``num_workers``), and the node batches and their seed only under the SGD solver."""
        drop = {"val_dataset", "evaluation", "cache", "num_workers"} | (set() if sgd else {"batches", "seed"})
        return {k: v for k, v in init_args.items() if k not in drop}

    # --- what the head module and the readouts need to know ----------------------------------------
    @property
    def num_training_tokens(self) -> int:
        """The tokens the training cache holds (images x views x tokens per view)."""
        return len(self.train_dataset) * self.views.views_per_image * (self.views.size // self.backbone.patch_size) ** 2

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

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # --- Lightning hooks -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build the cache and the operators (one process per node); :meth:`setup` then opens them."""
        if not self.batches.on_the_fly:
            start = time.perf_counter()
            self.open_cache()
            self.timings["cache_s"] = time.perf_counter() - start
            start = time.perf_counter()
            self.open_operators(self._device())
            self.timings["graphs_s"] = time.perf_counter() - start

    def open_cache(self) -> FeatureCache:
        """The training set's feature cache (built if missing)."""
        if self.cache is None:
            self.cache = FeatureCache.open_or_build(
                self.train_dataset, self.backbone, self.cache_keys, self.views.transform(), self.cache_dir,
                batch_size=self.cache_batch_size, num_workers=self.num_workers, device=self._device(),
            )
        return self.cache

    def open_operators(self, device: str | torch.device = "cpu") -> TrainingOperators:
        """The global operators of the cache (built on ``device`` if missing, memory-mapped once they exist)."""
        if self.operators is None:
            cache = self.open_cache()
            self.operators = load_or_build_operators(cache, self.graph_specs, self.knn, cache.views_per_image > 1, device)
        return self.operators

    def setup(self, stage: str) -> None:
        if self.seed is None:  # the seed given to seed_everything (LightningCLI's seed_everything option)
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if stage == "fit" and not self.batches.on_the_fly:
            self.open_operators()

    def train_dataloader(self) -> DataLoader:
        order = getattr(self.trainer.lightning_module, "node_order", "random") if self.trainer is not None else "random"
        if self.batches.on_the_fly:
            if order == "sweep":
                raise ConfigError("model.solver 'exact' needs the feature cache (data.batches.on_the_fly false); "
                                 "use model.solver sgd to train on the fly")
            data = self.train_dataset.with_transform(RandomViews(self.views.size, self.views.resize, num_views=2))
            return DataLoader(data, batch_size=self.batches.images_per_batch, shuffle=True, drop_last=True,
                              num_workers=self.num_workers, collate_fn=collate_views)
        batches = NodeBatches(self.cache, self.feature_keys, self.operators, self.batches.nodes,
                              self.batches.steps_per_epoch, self.seed, order=order)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return DataLoader(batches, batch_size=None, sampler=NodeBatchSampler(batches, world, rank),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.batches.on_the_fly and "image" in batch:
            return batch_from_images(self.backbone, batch, self.cache_keys, self.feature_keys, self.graph_specs, self.knn)
        return batch
