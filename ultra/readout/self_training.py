"""Self-training of the head's linear map on its own pseudo-labels, after the solve (DeepCluster-style, no labels).

Each round: k-means (K = clusters) on the current head's outputs over the training tokens; pseudo-labels = each
token's cluster, balanced so that no cluster vanishes (Sinkhorn-Knopp towards the first round's cluster sizes, as
SeLa/SwAV balance towards equal sizes); a multinomial logistic regression of the tokens (or of the solved head's
embedding) into the pseudo-labels (:func:`~ultra.readout.probe.fit_softmax_regression`); its logits are the next
head, an ordinary affine :class:`~ultra.head.projection.ProjectionHead` (tokens -> K). The rounds stop early when the
pseudo-labels stop changing. Everything runs on one sample of the training tokens drawn with the seed, so a run is
reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import scipy.optimize
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.cache import FeatureCache, TokenKey
from ..errors import ConfigError
from ..head.projection import ProjectionHead
from .kmeans import kmeans
from .probe import fit_softmax_regression

log = logging.getLogger(__name__)

BALANCES = ("none", "first", "uniform")
FEATURES = ("tokens", "embedding")


@dataclass(frozen=True)
class SelfTrainingConfig:
    """Self-training of the head after the solve (:mod:`ultra.readout.self_training`).

    Args:
        rounds: at most this many rounds (0: the solved head is kept as it is).
        features: what the classifier reads: the ``tokens`` themselves, or the solved head's ``embedding`` (the
            exported head is then the classifier composed with it, still one affine map of the tokens).
        balance: pseudo-labels balanced towards the first round's cluster sizes (``first``), equal sizes
            (``uniform``), or the plain nearest centroid (``none``: big clusters can swallow small ones).
        temperature: the Sinkhorn-Knopp temperature on the cosines (smaller: closer to the nearest centroid).
        weight_decay: the classifier's L2 penalty on its weights (on standardised tokens).
        steps: L-BFGS iterations of each round's classifier.
        sample: training tokens the rounds run on (drawn once with the seed).
        stop_change: stop when fewer than this fraction of the pseudo-labels change between rounds (after matching
            the clusters of the two rounds).
    """

    rounds: int = 0
    features: str = "tokens"
    balance: str = "first"
    temperature: float = 0.05
    weight_decay: float = 1e-4
    steps: int = 100
    sample: int = 1 << 17
    stop_change: float = 0.0

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ConfigError(f"self_training.features must be one of {FEATURES}, got '{self.features}'")
        if self.balance not in BALANCES:
            raise ConfigError(f"self_training.balance must be one of {BALANCES}, got '{self.balance}'")
        if self.rounds < 0 or min(self.steps, self.sample) < 1:
            raise ConfigError(
                f"self_training: rounds must be >= 0 and steps, sample >= 1, got {self.rounds}, {self.steps}, "
                f"{self.sample}"
            )
        if self.temperature <= 0 or self.weight_decay < 0 or not 0 <= self.stop_change < 1:
            raise ConfigError(
                "self_training: temperature must be > 0, weight_decay >= 0 and stop_change in [0, 1), got "
                f"{self.temperature}, {self.weight_decay}, {self.stop_change}"
            )

    def check_clusters(self, clusters: int) -> None:
        """Refused before any work: rounds over a sample with fewer tokens than clusters."""
        if self.rounds and self.sample < clusters:
            raise ConfigError(f"self_training.sample={self.sample} is smaller than the {clusters} clusters it labels")

    def check_head(self, head: nn.Module) -> None:
        """Refused before any work: rounds on the ``embedding`` of a head that is not one linear or affine map."""
        if self.rounds and self.features == "embedding":
            _inner_linear(head)

    def settings(self) -> dict:
        return asdict(self)


def sinkhorn_labels(scores: Tensor, sizes: Tensor, temperature: float, iterations: int = 50) -> Tensor:
    """Balanced assignment of rows to columns: Sinkhorn-Knopp scaling of ``exp(scores / temperature)`` until the
    columns hold ``sizes`` (fractions summing to 1) of the rows, then each row's largest entry."""
    log_q = (scores.double() - scores.max()) / temperature
    log_target = torch.log(sizes.double().clamp_min(1e-12) * scores.shape[0])
    log_col = torch.zeros(scores.shape[1], dtype=torch.float64)
    for _ in range(iterations):  # in the log domain: small temperatures do not underflow
        log_row = -torch.logsumexp(log_q + log_col, dim=1, keepdim=True)
        log_col = log_target - torch.logsumexp(log_q + log_row, dim=0)
    return (log_q + log_col).argmax(1)


def label_change(previous: Tensor, current: Tensor, k: int) -> float:
    """The fraction of rows whose label changed, after matching the two labellings' clusters one to one."""
    counts = torch.zeros(k, k, dtype=torch.long).index_put_((previous, current), torch.tensor(1), accumulate=True)
    rows, cols = scipy.optimize.linear_sum_assignment(counts.numpy(), maximize=True)
    return 1.0 - float(counts.numpy()[rows, cols].sum()) / previous.numel()


@dataclass
class SelfTrainingRound:
    round: int
    change: float  # fraction of pseudo-labels changed since the previous round (1.0 in the first)
    sizes: list[float]  # the pseudo-labels' cluster sizes (fractions)


def _outputs(head: nn.Module, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        return head.eval()(tokens)


def _inner_linear(head: nn.Module) -> nn.Linear:
    """The head's one linear layer, refused by name when it is not one linear or affine map."""
    inner = getattr(head, "net", None)
    if not isinstance(inner, nn.Linear):
        raise ConfigError("self_training.features 'embedding' needs a linear or affine head, not an MLP")
    return inner


def _composed(classifier: nn.Linear, head: nn.Module) -> nn.Linear:
    """``classifier(head(x))`` as one linear layer on the tokens (the head must be linear or affine)."""
    inner = _inner_linear(head)
    layer = nn.Linear(inner.in_features, classifier.out_features)
    with torch.no_grad():
        layer.weight.copy_(classifier.weight @ inner.weight)
        bias = classifier.bias + (classifier.weight @ inner.bias if inner.bias is not None else 0)
        layer.bias.copy_(bias)
    return layer


def check_no_cluster_vanished(counts: Tensor, index: int, config: SelfTrainingConfig) -> None:
    """Refuse a round whose balanced pseudo-labels leave a cluster empty (the rounds collapse: too high a temperature
    makes the balancing's scores uniform, too strong a weight decay the classifier's); with ``balance: none``
    (where big clusters may swallow small ones) it is a warning."""
    empty = int((counts == 0).sum())
    if not empty:
        return
    message = (
        f"self-training round {index}: the pseudo-labels leave {empty} of {counts.numel()} clusters empty "
        f"(sizes {counts.tolist()}): the rounds collapse"
    )
    if config.balance == "none":
        log.warning("%s (balance 'none' lets big clusters swallow small ones)", message)
        return
    raise ConfigError(
        f"{message}; lower self_training.temperature ({config.temperature}) or self_training.weight_decay "
        f"({config.weight_decay})"
    )


def token_sample(cache: FeatureCache, keys: Sequence[TokenKey], size: int, seed: int) -> Tensor:
    """``size`` training tokens (all of them if fewer) drawn with ``seed``, in cache order."""
    generator = torch.Generator().manual_seed(seed)
    return cache.rows(keys, torch.randperm(cache.num_nodes, generator=generator)[:size].sort().values)


def self_trained_head(
    head: nn.Module,
    cache: FeatureCache,
    keys: Sequence[TokenKey],
    clusters: int,
    config: SelfTrainingConfig,
    seed: int = 0,
    restarts: int = 3,
    progress: bool = True,
) -> tuple[nn.Module, list[SelfTrainingRound]]:
    """:func:`self_train` on ``config.sample`` training tokens of ``cache`` drawn with ``seed`` (read only if there
    are rounds)."""
    if config.rounds == 0:
        return head, []
    tokens = token_sample(cache, keys, config.sample, seed)
    return self_train(head, tokens, clusters, config, seed, restarts, progress)


def self_train(
    head: nn.Module,
    tokens: Tensor,
    clusters: int,
    config: SelfTrainingConfig,
    seed: int = 0,
    restarts: int = 3,
    progress: bool = True,
) -> tuple[nn.Module, list[SelfTrainingRound]]:
    """The head after at most ``config.rounds`` rounds of self-training on ``tokens`` (``[N, D]``, e.g.
    :func:`token_sample`), and each round's figures; the head itself when ``config.rounds`` is 0."""
    if config.rounds == 0:
        return head, []
    n = tokens.shape[0]
    if n < clusters:
        raise ConfigError(f"self-training needs at least {clusters} training tokens, got {n}")
    solved = head.eval()
    inputs = tokens if config.features == "tokens" else _outputs(solved, tokens)
    sizes, previous, history = None, None, []
    for index in range(1, config.rounds + 1):
        outputs = F.normalize(_outputs(head, tokens), dim=-1)
        centroids = kmeans(outputs, clusters, restarts=restarts, sample_size=None, seed=seed).centroids
        scores = outputs @ centroids.T
        if sizes is None:
            sizes = torch.bincount(scores.argmax(1), minlength=clusters).double() / n
        if config.balance == "none":
            labels = scores.argmax(1)
        else:
            target = sizes if config.balance == "first" else torch.full((clusters,), 1.0 / clusters)
            labels = sinkhorn_labels(scores, target, config.temperature)
        counts = torch.bincount(labels, minlength=clusters)
        check_no_cluster_vanished(counts, index, config)
        change = 1.0 if previous is None else label_change(previous, labels, clusters)
        history.append(SelfTrainingRound(index, change, (counts / n).tolist()))
        log.info("self-training round %d: %.1f%% of the pseudo-labels changed", index, 100 * change)
        if change < config.stop_change:
            break
        layer = fit_softmax_regression(
            inputs, labels, clusters, config.steps, config.weight_decay, f"self-training round {index}", progress
        )
        head = ProjectionHead.from_linear(layer if config.features == "tokens" else _composed(layer, solved))
        previous = labels
    return head, history
