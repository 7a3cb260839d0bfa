"""Hungarian-matched metrics: hand-worked cases, brute force on small cases, accumulation over batches."""

import itertools
import math

import numpy as np
import pytest
import torch

from ultra.evaluation.metrics import (
    SupervisedSegmentationMetric,
    UnsupervisedSegmentationMetric,
    as_floats,
    hungarian_match,
)


def _pixels(pairs):
    """Build (preds, target) tensors from a list of (cluster, class, count)."""
    preds, target = [], []
    for cluster, cls, count in pairs:
        preds += [cluster] * count
        target += [cls] * count
    return torch.tensor(preds).view(1, 1, -1), torch.tensor(target).view(1, 1, -1)


def test_hand_worked_example():
    # clusters x classes confusion: [[0, 8, 2], [5, 0, 0], [1, 1, 3]]
    preds, target = _pixels([(0, 1, 8), (0, 2, 2), (1, 0, 5), (2, 0, 1), (2, 1, 1), (2, 2, 3)])
    metric = UnsupervisedSegmentationMetric(num_classes=3)
    metric.update(preds, target)
    out = metric.compute()
    assert out["cluster_to_class"].tolist() == [1, 0, 2]
    assert out["assignment"].tolist() == [1, 0, 2]
    # class 0: tp 5, fp 0, fn 1 -> 5/6; class 1: tp 8, fp 2, fn 1 -> 8/11; class 2: tp 3, fp 2, fn 2 -> 3/7
    expected = [5 / 6, 8 / 11, 3 / 7]
    assert torch.allclose(out["iou"], torch.tensor(expected, dtype=torch.float64))
    assert math.isclose(out["miou"].item(), sum(expected) / 3)
    assert math.isclose(out["acc"].item(), 16 / 20)


def test_cluster_ids_are_a_permutation_away_from_perfect():
    target = torch.randint(0, 4, (2, 16, 16))
    perm = torch.tensor([2, 0, 3, 1])
    metric = UnsupervisedSegmentationMetric(4)
    metric.update(perm[target], target)
    out = metric.compute()
    assert out["miou"].item() == 1.0 and out["acc"].item() == 1.0
    assert out["cluster_to_class"][perm].tolist() == [0, 1, 2, 3]


def test_extra_clusters_count_as_wrong():
    # class 0 split across clusters 0 (6 px) and 3 (4 px); class 1 in cluster 1 (10 px); cluster 2 empty
    preds, target = _pixels([(0, 0, 6), (3, 0, 4), (1, 1, 10)])
    metric = UnsupervisedSegmentationMetric(num_classes=2, num_clusters=4)
    metric.update(preds, target)
    out = metric.compute()
    assert out["cluster_to_class"].tolist() == [0, 1, -1, -1]
    assert math.isclose(out["acc"].item(), 16 / 20)
    assert torch.allclose(out["iou"], torch.tensor([0.6, 1.0], dtype=torch.float64))


def test_fewer_clusters_than_classes_and_absent_classes():
    preds, target = _pixels([(0, 0, 5), (0, 1, 5), (1, 2, 4)])
    metric = UnsupervisedSegmentationMetric(num_classes=4, num_clusters=2)
    metric.update(preds, target)
    out = metric.compute()
    iou = out["iou"]
    assert math.isnan(iou[3].item())  # absent from labels and predictions: left out
    assert iou[2].item() == 1.0
    assert sorted([iou[0].item(), iou[1].item()]) == [0.0, 0.5]  # one of classes 0/1 is unmatched
    assert math.isclose(out["miou"].item(), 1.5 / 3)
    assert math.isclose(out["miou_present"].item(), 1.5 / 3)
    assert as_floats(out)["iou"][3] is None


def test_present_class_mean_leaves_out_classes_without_labels():
    # class 2 has no labelled pixel but gets a matched cluster's predictions: IoU 0 in miou, left out of miou_present
    preds, target = _pixels([(0, 0, 4), (1, 1, 4), (2, 0, 2)])
    metric = UnsupervisedSegmentationMetric(num_classes=3)
    metric.update(preds, target)
    out = metric.compute()
    assert out["cluster_to_class"].tolist() == [0, 1, 2]
    assert torch.allclose(out["iou"], torch.tensor([4 / 6, 1.0, 0.0], dtype=torch.float64))
    assert math.isclose(out["miou"].item(), (4 / 6 + 1) / 3)
    assert math.isclose(out["miou_present"].item(), (4 / 6 + 1) / 2)


def test_ignore_pixels_are_not_counted():
    target = torch.tensor([[[0, 1, 255, 255]]])
    preds = torch.tensor([[[0, 1, 1, 0]]])
    metric = UnsupervisedSegmentationMetric(2)
    metric.update(preds, target)
    assert metric.confusion.sum() == 2
    assert metric.compute()["acc"].item() == 1.0


def test_scores_accepted_and_bad_ids_rejected():
    metric = UnsupervisedSegmentationMetric(3)
    scores = torch.zeros(1, 3, 2, 2)
    scores[:, 2] = 1
    metric.update(scores, torch.full((1, 2, 2), 1))
    assert metric.confusion[2, 1] == 4
    with pytest.raises(ValueError, match=r"preds holds ids \[5\] outside \[0, 3\)"):
        metric.update(torch.full((1, 2, 2), 5), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target holds ids \[7\] outside \[0, 3\)"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))


def _brute_force(confusion: np.ndarray) -> tuple[int, list[float]]:
    """The most matched pixels over every injective cluster->class matching, and the mIoU of each optimal one."""
    n_clusters, n_classes = confusion.shape
    k = min(n_clusters, n_classes)
    results = []
    for clusters in itertools.permutations(range(n_clusters), k):
        for classes in itertools.combinations(range(n_classes), k):
            pairs = list(zip(clusters, classes))
            matched = sum(confusion[c, k] for c, k in pairs)
            ious = []
            for cls in range(n_classes):
                cluster = next((c for c, k in pairs if k == cls), None)
                tp = confusion[cluster, cls] if cluster is not None else 0
                pred = confusion[cluster].sum() if cluster is not None else 0
                union = pred + confusion[:, cls].sum() - tp
                if union > 0:
                    ious.append(tp / union)
            results.append((matched, float(np.mean(ious))))
    best = max(m for m, _ in results)
    return best, [miou for m, miou in results if m == best]


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_small_random_cases(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 5))
    n_clusters = [n_classes, n_classes + 2, max(1, n_classes - 1)][seed % 3]
    target = torch.from_numpy(rng.integers(0, n_classes, (2, 9, 11)))
    preds = torch.from_numpy(rng.integers(0, n_clusters, (2, 9, 11)))
    metric = UnsupervisedSegmentationMetric(n_classes, n_clusters)
    metric.update(preds, target)
    out = metric.compute()
    confusion = metric.confusion.numpy()
    best, optimal_mious = _brute_force(confusion)
    assert math.isclose(out["acc"].item(), best / confusion.sum())
    assert any(math.isclose(out["miou"].item(), m) for m in optimal_mious)


def test_hungarian_match_is_unique_optimum():
    confusion = torch.tensor([[10, 9], [9, 1]])
    assert hungarian_match(confusion).tolist() == [1, 0]  # 9 + 9 > 10 + 1


def test_supervised_metric_needs_no_matching():
    target = torch.tensor([[[0, 1, 2, 2]]])
    preds = torch.tensor([[[0, 1, 2, 1]]])
    metric = SupervisedSegmentationMetric(3)
    metric.update(preds, target)
    out = metric.compute()
    assert torch.allclose(out["iou"], torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    assert math.isclose(out["acc"].item(), 0.75)


def test_accumulates_over_batches_and_resets():
    metric = UnsupervisedSegmentationMetric(2)
    metric.update(torch.tensor([[[0, 0]]]), torch.tensor([[[0, 0]]]))
    metric.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 0]]]))
    assert metric.confusion.tolist() == [[2, 0], [1, 1]]
    metric.reset()
    assert metric.confusion.sum() == 0
