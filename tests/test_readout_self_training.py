"""Self-training of the head on its own pseudo-labels: balanced labels, the rounds, reproducibility."""

import pytest
import torch
from helpers import clustered_tokens

from ultra.errors import ConfigError
from ultra.head.projection import ProjectionHead
from ultra.readout.self_training import SelfTrainingConfig, label_change, self_train, sinkhorn_labels


def test_balanced_labels_keep_a_dominated_cluster_alive():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(900, 3, generator=g) * 0.1
    scores[:, 0] += 0.5  # every row is nearest to cluster 0
    assert torch.bincount(scores.argmax(1), minlength=3).tolist() == [900, 0, 0]
    sizes = torch.tensor([0.5, 0.3, 0.2])
    counts = torch.bincount(sinkhorn_labels(scores, sizes, temperature=0.01), minlength=3)
    assert torch.allclose(counts / 900.0, sizes, atol=0.03)


def test_balanced_labels_leave_a_clear_assignment_alone():
    truth = torch.arange(3).repeat_interleave(torch.tensor([500, 300, 200]))
    scores = torch.nn.functional.one_hot(truth, 3).float() * 0.8 + 0.1
    labels = sinkhorn_labels(scores, torch.tensor([0.5, 0.3, 0.2]), temperature=0.05)
    assert torch.equal(labels, truth)


def test_label_change_matches_the_clusters_of_two_rounds():
    previous = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    assert label_change(previous, (previous + 1) % 3, 3) == 0.0  # the same partition, renamed
    moved = torch.tensor([1, 1, 2, 2, 0, 0, 0, 1])
    assert label_change(previous, moved, 3) == pytest.approx(1 / 8)


def _tokens_and_head(seed=0):
    tokens, truth = clustered_tokens(images=20, tokens=50, dim=24, clusters=4, seed=seed, spread=1.0)
    head = ProjectionHead(24, 8)
    torch.nn.init.normal_(head.net.weight, generator=torch.Generator().manual_seed(seed))
    return tokens.reshape(-1, 24), truth.reshape(-1), head


def test_self_training_gives_an_affine_head_over_the_clusters_reproducibly():
    tokens, _, head = _tokens_and_head()
    config = SelfTrainingConfig(rounds=2)
    first, history = self_train(head, tokens, 4, config, seed=3, progress=False)
    again, _ = self_train(head, tokens, 4, config, seed=3, progress=False)
    assert first.architecture == "affine" and (first.in_dim, first.out_dim) == (24, 4)
    assert torch.equal(first.net.weight, again.net.weight) and torch.equal(first.net.bias, again.net.bias)
    assert [r.round for r in history] == [1, 2] and history[0].change == 1.0
    assert sum(history[-1].sizes) == pytest.approx(1.0) and min(history[-1].sizes) > 0.05


def test_self_training_stops_when_the_pseudo_labels_stop_changing():
    tokens, _, head = _tokens_and_head()
    _, history = self_train(head, tokens, 4, SelfTrainingConfig(rounds=8, stop_change=0.01), progress=False)
    assert 2 <= len(history) < 8 and history[-1].change < 0.01
    assert all(r.change >= 0.01 for r in history[:-1])


def test_no_rounds_keep_the_solved_head():
    tokens, _, head = _tokens_and_head()
    assert self_train(head, tokens, 4, SelfTrainingConfig(rounds=0)) == (head, [])


@pytest.mark.parametrize(
    "settings",
    [
        {"rounds": -1},
        {"features": "logits"},
        {"balance": "equal"},
        {"temperature": 0.0},
        {"weight_decay": -1.0},
        {"stop_change": 1.0},
    ],
)
def test_self_training_settings_are_checked(settings):
    with pytest.raises(ConfigError, match="self_training"):
        SelfTrainingConfig(**settings)


def test_a_classifier_on_the_embedding_is_exported_composed_with_the_solved_head():
    tokens, _, head = _tokens_and_head()
    trained, _ = self_train(head, tokens, 4, SelfTrainingConfig(rounds=2, features="embedding"), progress=False)
    assert trained.architecture == "affine" and (trained.in_dim, trained.out_dim) == (24, 4)
    basis = torch.linalg.qr(head.net.weight.detach().T).Q  # the solved head's row space (8 of 24 dimensions)
    weight = trained.net.weight.detach()
    assert torch.allclose(weight @ basis @ basis.T, weight, atol=1e-4)  # it reads the tokens only through the head
    on_tokens, _ = self_train(head, tokens, 4, SelfTrainingConfig(rounds=2), progress=False)
    other = on_tokens.net.weight.detach()
    assert not torch.allclose(other @ basis @ basis.T, other, atol=1e-2)


def test_an_mlp_head_cannot_be_composed_with_the_classifier():
    tokens, _, _ = _tokens_and_head()
    mlp = ProjectionHead(24, 8, "mlp", hidden_dim=16)
    with pytest.raises(ConfigError, match="embedding"):
        self_train(mlp, tokens, 4, SelfTrainingConfig(rounds=1, features="embedding"), progress=False)


def test_a_sample_smaller_than_the_clusters_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"self_training.sample=3 is smaller than the 4 clusters"):
        SelfTrainingConfig(rounds=1, sample=3).check_clusters(4)
    SelfTrainingConfig(rounds=0, sample=3).check_clusters(4)  # no rounds: the sample is never drawn


def test_fewer_tokens_than_clusters_are_named():
    tokens, _, head = _tokens_and_head()
    with pytest.raises(ConfigError, match="at least 4 training tokens, got 3"):
        self_train(head, tokens[:3], 4, SelfTrainingConfig(rounds=1), progress=False)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 1e9},  # the balancing's scores are uniform: one cluster takes everything
        {"temperature": 50.0},
        {"weight_decay": 1e12, "rounds": 2},  # the classifier's logits are flat: round 2 collapses
    ],
)
def test_a_collapsing_self_training_is_refused_by_name(settings):
    tokens, _, head = _tokens_and_head()
    config = SelfTrainingConfig(**{"rounds": 1, **settings})
    with pytest.raises(ConfigError, match=r"leave \d of 4 clusters empty .*lower self_training.temperature"):
        self_train(head, tokens, 4, config, progress=False)
