"""The supervised reference: a linear probe (multinomial logistic regression) on cached labelled tokens."""

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
    """A linear classifier of tokens into classes (None if the cache has no labels).

    Multinomial logistic regression fitted by full-batch L-BFGS (``steps`` iterations) on up to
    ``max_rows`` labelled tokens drawn once with ``seed``, on standardised tokens (the scaling is
    folded into the returned layer): a convex fit, so the result hardly depends on the seed.
    """
    labelled = torch.from_numpy(np.flatnonzero(cache.labels.reshape(-1) != 255))
    if labelled.numel() == 0:
        log.warning("no labelled tokens in the training cache: no linear probe")
        return None
    if labelled.numel() > max_rows:
        generator = torch.Generator().manual_seed(seed)
        labelled = labelled[torch.randperm(labelled.numel(), generator=generator)[:max_rows]].sort().values
    x, y = cache.rows(keys, labelled), cache.node_labels(labelled)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    probe = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(
        probe.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )
    bar = tqdm(desc="linear probe (L-BFGS)", total=steps, disable=not progress)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    bar.update(steps)
    bar.close()
    with torch.no_grad():
        log.info("linear probe: %d tokens, training loss %.4f", labelled.numel(), float(F.cross_entropy(probe(x), y)))
    with torch.no_grad():  # fold the standardisation in: W (x - mean) / std + b
        probe.weight.div_(std)
        probe.bias.sub_(probe.weight @ mean)
    return probe
