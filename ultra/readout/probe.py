"""Multinomial logistic regression of tokens, fitted by full-batch L-BFGS: the supervised linear probe (on labels)
and the classifier of the head's self-training (on its own pseudo-labels, :mod:`ultra.readout.self_training`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.cache import FeatureCache, TokenKey

log = logging.getLogger(__name__)


def fit_softmax_regression(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    steps: int = 100,
    weight_decay: float = 1e-4,
    description: str = "linear classifier (L-BFGS)",
    progress: bool = True,
) -> nn.Linear:
    """A linear classifier ``x -> y`` (``[N, D]`` rows, ``[N]`` classes): cross-entropy plus ``weight_decay`` times
    the squared weights, from zero by ``steps`` L-BFGS iterations on standardised rows (the scaling folded into the
    returned layer). A convex fit: the same rows give the same layer."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    layer = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x), y) + weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    with tqdm(desc=description, total=steps, disable=not progress) as bar:
        optimizer.step(closure)
        bar.update(steps)
    with torch.no_grad():
        log.info("%s: %d rows, training loss %.4f", description, x.shape[0], float(F.cross_entropy(layer(x), y)))
        layer.weight.div_(std)  # fold the standardisation in: W (x - mean) / std + b
        layer.bias.sub_(layer.weight @ mean)
    return layer


def train_probe(
    cache: FeatureCache,
    keys: Sequence[TokenKey],
    num_classes: int,
    steps: int = 100,
    max_rows: int = 1 << 17,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
) -> nn.Linear | None:
    """The supervised linear probe: :func:`fit_softmax_regression` on up to ``max_rows`` labelled tokens drawn once
    with ``seed`` (None if the cache has no labels)."""
    labelled = torch.from_numpy(np.flatnonzero(cache.labels.reshape(-1) != 255))
    if labelled.numel() == 0:
        log.warning("no labelled tokens in the training cache: no linear probe")
        return None
    if labelled.numel() > max_rows:
        generator = torch.Generator().manual_seed(seed)
        labelled = labelled[torch.randperm(labelled.numel(), generator=generator)[:max_rows]].sort().values
    x, y = cache.rows(keys, labelled), cache.node_labels(labelled)
    return fit_softmax_regression(x, y, num_classes, steps, weight_decay, "linear probe (L-BFGS)", progress)
