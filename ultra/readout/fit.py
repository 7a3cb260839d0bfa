"""The readouts of a trained head, fitted over the cached training tokens: k-means centroids of the head's
outputs and of raw tokens (the no-head baseline), and the optional supervised probe."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.cache import FeatureCache, TokenKey
from ..data.standardise import SPACES, token_map
from ..errors import ConfigError
from ..head.projection import ProjectionHead
from .kmeans import SAMPLE_SIZE, kmeans
from .probe import train_probe
from .segmenter import MAX_CLUSTERS, ClusterReadout, ProbeReadout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadoutConfig:
    """The readouts fitted after the head.

    Args:
        extra_clusters: k-means clusters beyond the number of classes.
        restarts: k-means restarts (on ``kmeans_sample`` tokens; the best one then refined on all).
        kmeans_sample: tokens the k-means restarts run on.
        raw_spaces: the no-head baselines: k-means on the last feature layer's tokens in each of these token
            spaces (``raw``, ``centred``, ``whitened``; :mod:`ultra.data.standardise`), read out as ``raw``,
            ``raw_centred`` and ``raw_whitened``; the report compares the head with the best of them. Empty: none.
        probe: also fit the supervised linear probe and the oracle head, k-means on its logits (the references that
            use labels).
        probe_steps: L-BFGS iterations of the probe.
    """

    extra_clusters: int = 0
    restarts: int = 3
    kmeans_sample: int = SAMPLE_SIZE
    raw_spaces: tuple[str, ...] = SPACES
    probe: bool = True
    probe_steps: int = 100

    def __post_init__(self):
        unknown = [space for space in self.raw_spaces if space not in SPACES]
        if unknown or len(set(self.raw_spaces)) != len(self.raw_spaces):
            raise ConfigError(
                f"readout.raw_spaces must be distinct token spaces of {SPACES}, got {list(self.raw_spaces)}"
            )
        if self.extra_clusters < 0 or min(self.restarts, self.kmeans_sample, self.probe_steps) < 1:
            raise ConfigError(
                "readout: extra_clusters must be >= 0 and restarts, kmeans_sample, probe_steps >= 1, got "
                f"{self.extra_clusters}, {self.restarts}, {self.kmeans_sample}, {self.probe_steps}"
            )

    def check_clusters(self, num_classes: int, num_training_tokens: int) -> int:
        """The k-means clusters of a data set with ``num_classes`` classes, refused before any work when a label map
        cannot hold them or the k-means sample or the training set's tokens are fewer."""
        clusters = num_classes + self.extra_clusters
        if clusters > MAX_CLUSTERS:
            raise ConfigError(
                f"{num_classes} classes + readout.extra_clusters {self.extra_clusters} = {clusters} "
                f"clusters; label maps hold at most {MAX_CLUSTERS} (8-bit ids, 255 = unmatched)"
            )
        if min(self.kmeans_sample, num_training_tokens) < clusters:
            raise ConfigError(
                f"{clusters} clusters, but readout.kmeans_sample={self.kmeans_sample} and the training set "
                f"gives {num_training_tokens} tokens: both must be at least the clusters"
            )
        return clusters


class CachedRows:
    """Rows of cached tokens (keys concatenated), optionally through a module (e.g. the head), computed on demand."""

    def __init__(self, cache: FeatureCache, keys: Sequence[TokenKey], module: nn.Module | None = None):
        self.cache, self.keys, self.module = cache, list(keys), module

    def __len__(self) -> int:
        return self.cache.num_nodes

    @torch.no_grad()
    def __getitem__(self, index: Tensor) -> Tensor:
        rows = self.cache.rows(self.keys, index)
        if self.module is None:
            return rows
        device = next(self.module.parameters()).device
        return self.module(rows.to(device)).cpu()


def fit_centroids(rows: CachedRows, k: int, seed: int = 0, restarts: int = 3, sample_size: int = SAMPLE_SIZE) -> Tensor:
    """Cosine k-means centroids ``[k, D]``: restarts on a sample of the rows, then one pass over all of them."""
    result = kmeans(rows, k, restarts=restarts, sample_size=sample_size, seed=seed)
    log.info("k-means: %d clusters of %d rows, inertia %.1f (restart %d)", k, len(rows), result.inertia, result.restart)
    return result.centroids


def raw_readout_name(space: str) -> str:
    """The readout name of the no-head baseline in a token space: ``raw``, ``raw_centred``, ``raw_whitened``."""
    return "raw" if space == "raw" else f"raw_{space}"


def fit_readouts(
    head: nn.Module,
    cache: FeatureCache,
    feature_keys: Sequence[TokenKey],
    class_names: Sequence[str],
    config: ReadoutConfig,
    seed: int,
    progress: bool = True,
) -> dict[str, nn.Module]:
    """k-means on the head's outputs (and on raw tokens), and with ``config.probe`` the supervised probe and the oracle
    head (k-means on the probe's logits), over the training cache."""
    k = len(class_names) + config.extra_clusters
    head = head.eval()

    def centroids(rows: CachedRows) -> Tensor:
        return fit_centroids(rows, k, seed, config.restarts, config.kmeans_sample)

    readouts = {"head": ClusterReadout(feature_keys, centroids(CachedRows(cache, feature_keys, head)), head)}
    raw = [feature_keys[-1]]
    for space in config.raw_spaces:
        affine = token_map(cache, raw, space)
        readouts[raw_readout_name(space)] = ClusterReadout(
            raw, centroids(CachedRows(cache, raw, affine)), token_map=affine
        )
    if config.probe:
        probe = train_probe(
            cache, feature_keys, len(class_names), steps=config.probe_steps, seed=seed, progress=progress
        )
        if probe is not None:
            readouts["probe"] = ProbeReadout(feature_keys, probe)
            readouts["oracle"] = oracle_readout(cache, feature_keys, probe, seed, config.restarts, config.kmeans_sample)
    return readouts


def oracle_readout(
    cache: FeatureCache,
    keys: Sequence[TokenKey],
    probe: nn.Linear,
    seed: int,
    restarts: int = 3,
    sample_size: int = SAMPLE_SIZE,
) -> ClusterReadout:
    """The oracle head: the probe's logits as a head, read out by k-means (K = classes). The best a linear map read
    out by k-means can do when the map knows the classes, the ceiling every head is measured against (it uses labels,
    as the probe)."""
    head = ProjectionHead.from_linear(probe)
    rows = CachedRows(cache, keys, head)
    return ClusterReadout(keys, fit_centroids(rows, probe.out_features, seed, restarts, sample_size), head)
